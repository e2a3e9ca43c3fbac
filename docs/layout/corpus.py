import random, sys
r = random.Random(0)
words = "the cat sat on a mat while dogs ran over green hills and birds sang songs of old kings".split()
with open(sys.argv[1], "w") as f:
    for i in range(6000):
        if i % 2:
            f.write(" ".join(r.choice(words) for _ in range(r.randint(5, 15))).capitalize() + ".\n\n")
        else:
            w = "".join(r.choice("abcdefg") for _ in range(r.randint(2, 5)))
            a = r.randint(0, 9)
            f.write(f"Input: {w}\nOutput: {w}\n\nInput: copy {a}\nOutput: {a}\n\n")
