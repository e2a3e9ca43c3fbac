"""Paired gains for the PALMS run in /tmp/acc/palms, with fewshot.experiments.palms' own functions."""
import json
import fewshot
from fewshot.experiments.palms import PALMS_DIR, margins, paired_gains, read_probes
probes = read_probes(PALMS_DIR / "probes.jsonl")
found = {name: margins(fewshot.load(path), probes) for name, path in
         (("base", "runs/smollm2"), ("control", "palms/control"), ("targeted", "palms/targeted"))}
print(json.dumps(paired_gains(found), indent=1))
saved = json.load(open("palms/palms.json"))
old = {a["model"]: a["margin"] for a in saved["adherence"] if a["category"] == "all"}
print({k: sum(v) / len(v) for k, v in found.items()}, old)
