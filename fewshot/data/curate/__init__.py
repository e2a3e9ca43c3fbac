"""The GPT-3 data pipeline (§2.2, Appendix A) before tokenising, one stage per module:

- documents.py      sources (a folder, a text file, JSONL) as a stream of documents, and their weights
- dedup.py          exact duplicates by hash, then near-duplicates by MinHash LSH (datasketch)
- quality.py        a linear classifier (scikit-learn) of reference text vs raw text, GPT-3's Pareto rule
- decontaminate.py  documents sharing a 13-gram with the evaluation tasks are dropped
- mixture.py        sampling weights per source, and the epochs each source is seen for
- pipeline.py       the stages in order, their summaries and report.md; then `fewshot prepare` tokenises
"""
