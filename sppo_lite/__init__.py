"""sppo-lite: Self-Play Preference Optimization (arXiv 2405.00675), explained and reproduced.

Modules, one concept each (import the one you need; nothing heavy is imported here):
    game      preference matrices, Nash by LP, exploitability, exact and sampled SPPO dynamics
    losses    sppo, sppo_single, sppo_hard, dpo, ipo on sequence log-probs
    plots     the figures the notebooks show
    cli       the `sppo-lite` command
"""
__version__ = "0.1.0"
