"""`python -m fewshot.eval.lmeval ...`: lm-eval's own CLI with the "fewshot" model registered."""

from fewshot.eval.lmeval.backend import main

main()
