"""Data, one subpackage per stage: pretraining datasets (pretrain), one-time preparation (prepare), and the
downstream evaluation tasks (tasks)."""
