"""sppo-lite: Self-Play Preference Optimization (arXiv 2405.00675), explained and reproduced.

Modules, one concept each (import the one you need; nothing heavy is imported here):
    game        preference matrices, Nash by LP, exploitability, exact and sampled SPPO dynamics
    losses      sppo, sppo_single, sppo_hard, dpo, ipo on sequence log-probs
    judges      Judge protocol → K×K win matrix; PairRM, reward model, rule judges
    pairrm      llm-blender on transformers 5; a tiny offline PairRM-shaped ranker
    generation  K seeded samples per prompt, batched
    data        prompts, official win rates and pairs, reference log-probs
    modeling    load a policy full / LoRA / QLoRA; tiny local Mistral factory
    trainer     SPPOTrainer on transformers.Trainer
    loop        the resumable stages generate → judge → build → train
    evaluate    win rates, length-controlled win rate, bootstrap CIs, best-of-n, the paper's table
    claims      claim(condition, statement, **numbers): a notebook sentence checked by its run
    evaluation_run  a finished run read back and evaluated iteration by iteration
    reproduce   the pipeline from a notebook (in-process or accelerate launch); notebooks 04 → 05
    plots       the figures the notebooks show
    notebooks   papermill execution of the notebooks
    cli         the `sppo-lite` command
"""
__version__ = "0.1.0"
