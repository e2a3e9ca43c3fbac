"""Scaling laws (Kaplan et al. 2020; Hoffmann et al. 2022): model shapes from a rule, compute
accounting, and the power-law fits with bootstrap intervals."""
