"""`orchestrator doctor`'s KVM line follows what the probe boot recorded."""

from __future__ import annotations

import json

from orchestrator.lifecycle import doctor, vm


def test_the_kvm_line_reports_a_recorded_failed_probe(tmp_path, monkeypatch):
    record = tmp_path / "kvm-probe"
    monkeypatch.setattr(vm, "KVM_PROBE_FILE", record)
    monkeypatch.setattr(vm, "kvm_device_usable", lambda: True)
    assert doctor._kvm(probe=False)[0] is True          # nothing probed yet: present, undecided
    record.write_text(json.dumps({"boot_id": vm._boot_id(), "works": False}))
    works, detail = doctor._kvm(probe=False)
    assert works is False and "software emulation" in detail
    record.write_text(json.dumps({"boot_id": "an earlier boot", "works": False}))
    assert vm.recorded_kvm_probe() is None               # a probe of another boot says nothing
