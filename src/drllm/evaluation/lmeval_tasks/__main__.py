"""Print the directory of drllm's lm-eval task configs (for lm-eval's --include_path)."""
from drllm.evaluation.lmeval_tasks import PATH

print(PATH)
