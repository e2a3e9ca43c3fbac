import json, random, sys
r = random.Random(1)
with open(sys.argv[1] + "/gen.jsonl", "w") as f:
    for i in range(40):
        w = "".join(r.choice("abcdefg") for _ in range(r.randint(2, 5)))
        f.write(json.dumps({"input": w, "target": w}) + "\n")
with open(sys.argv[1] + "/mc.jsonl", "w") as f:
    for i in range(40):
        a = r.randint(0, 9); ch = [str(a), str((a + 1) % 10), str((a + 5) % 10)]
        lab = 0; r.shuffle(ch); lab = ch.index(str(a))
        f.write(json.dumps({"input": f"copy {a}", "choices": ch, "label": lab}) + "\n")
