"""The running controller: kopf handlers over the pure reconcilers (`kopf run -m mlkube.operator.main`)."""
