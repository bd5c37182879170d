"""What a job needs besides the training loop: task data and statistics, evaluation metrics,
predictions. Host-side (numpy); no module here imports a workflow."""
