# Scores through every scoring path: lm.score, eval's MC chooser, lm-eval's loglikelihood.
import sys
import fewshot
lm = fewshot.load(sys.argv[1])
pairs = [("The cat", " sat"), ("", "The dog"), ("Birds sang songs of", " old kings."), ("x" * 300, " on a mat")]
for c, x in pairs:
    print("score", repr(c[:10]), repr(x), repr(lm.score(c, x)))
try:
    import fewshot.lmeval as le
except ImportError:
    import fewshot.eval.lmeval.backend as le
from types import SimpleNamespace as NS
h = le.FewshotLM(sys.argv[1], device="cpu", batch_size=2)
reqs = [NS(args=(c, x)) for c, x in pairs] + [NS(args=("a " * 200, "the cat " * 40))]
for r in h.loglikelihood(reqs):
    print("lmeval", repr(r))
for r in h.loglikelihood_rolling([NS(args=("The cat sat on a mat. " * 30,))]):
    print("rolling", repr(r))
print("until", h.generate_until([NS(args=("The cat", {"until": ["."], "max_gen_toks": 30}))]))
# The harness's greedy answers themselves (exact match alone hides them when all are wrong).
try:
    from fewshot.evaluate import task_from_file, build_prompt, greedy_answers
except ImportError:
    from fewshot.eval.harness import task_from_file, build_prompt, greedy_answers
t = task_from_file("/tmp/eq/gen.jsonl", 20)
for k in (0, 3):
    prompts = [build_prompt(lm, t, i, k, 0, 256 - 16)[0] for i in range(20)]
    print("answers", k, greedy_answers(lm, prompts, 16, (), 5, 7))
