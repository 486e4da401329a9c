"""The model server's protocols, in the layers KServe's server has: per-protocol decoding and
wording in ``rest/`` (``v1_endpoints``: mlkube's ``/predict`` and KServe v1; ``v2_endpoints``: the
Open Inference Protocol), one ``dataplane`` (predictor, thread pool, request ids, metrics,
inference log, live quality) under them, and ``mlkube.runtime.serve``, the service, on top."""
