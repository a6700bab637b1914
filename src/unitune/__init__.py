"""unitune: post-train causal LMs (SFT, DPO, ORPO, KTO, GRPO, RLOO, distillation, reward models; LoRA/QLoRA)
and compare the runs."""

__version__ = "0.1.0"
