"""shapes-t2v: our own small text-to-video model, its data, judge and training script."""
