"""The latency model: what each stage of a speculation cycle costs on a device.

``stages`` (the stages as work: bytes and FLOPs of a transformer's passes), ``roofline``
(devices and the least time a stage can take), ``models`` (per-stage roofline-shaped,
linear and random-forest models, judged on held-out model shapes), ``estimator`` (the fitted
estimator and ``stage_seconds``, the prediction for a stage on a device), ``transfer``
(recalibration to other hardware from a few samples), ``guardrail`` (accepting a
configuration only when its prediction interval fits a latency budget), ``emulation`` (the
seconds a forward pass takes on an emulated device, and which stage it is).  Pure: no I/O,
no clocks; measuring is ``orchestrator latency``'s, padding passes to an emulated device's
time ``agents.backends.emulated``'s.
"""
