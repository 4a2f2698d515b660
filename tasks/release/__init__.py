"""From a trained run to a champion: publishing, MLflow tracking, the promotion
gate, promotion, the report."""
