"""``edgetl bundle pack|unpack|check``: ship bundles as one archive and smoke-test them."""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say
from edgetl.cli.options import device_option, no_verify_option, precision_option
from edgetl.runtime.artifacts import PRECISIONS
from edgetl.tables import format_table


@click.group()
def command() -> None:
    """Pack, unpack and smoke-test deployment bundles."""


@command.command("pack")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False),
              help="Archive to write (default: BUNDLE.tar.gz beside the bundle).")
@click.option("--with-calibration", is_flag=True,
              help="Ship the calibration statistics too (left out by default: only re-quantization on a "
                   "workstation reads them, and quantize measures them again when missing).")
@config_option
@json_option
@handle_errors
def pack_cmd(bundle: str, out: str | None, with_calibration: bool, as_json: bool) -> None:
    """Verify BUNDLE and pack what a device needs into one .tar.gz."""
    from edgetl.bundle import open_bundle
    from edgetl.bundle.pack import WORKSTATION_KINDS, left_out, pack

    kinds = () if with_calibration else WORKSTATION_KINDS
    target = Path(out) if out else Path(str(Path(bundle).resolve()) + ".tar.gz")
    path = pack(bundle, target, leave_out=kinds)
    skipped = left_out(open_bundle(bundle, verify=False), kinds)
    size = path.stat().st_size
    if as_json:
        emit_json({"bundle": bundle, "archive": str(path), "bytes": size, "left_out": skipped})
        return
    say(f"packed {bundle} -> {path} ({size / 1e6:.2f} MB)")
    if skipped:
        saved = sum(int(a["bytes"] or 0) for a in skipped) / 1e6
        say(f"left out: {len(skipped)} calibration file(s), {saved:.1f} MB (--with-calibration ships them)")


@command.command("unpack")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (after the new bundle verified).")
@config_option
@json_option
@handle_errors
def unpack_cmd(archive: str, out: str, overwrite: bool, as_json: bool) -> None:
    """Safely unpack ARCHIVE into OUT and verify every artifact's sha256."""
    from edgetl.bundle.pack import unpack

    bundle = unpack(archive, out, overwrite=overwrite)
    if as_json:
        emit_json({"archive": archive, "bundle": str(bundle.root), "artifacts": len(bundle.artifacts),
                   "verified": True})
    else:
        say(f"unpacked {archive} -> {bundle.root} ({len(bundle.artifacts)} artifacts verified)")


@command.command("check")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]))
@precision_option("all", ("all", *PRECISIONS))
@device_option("auto")
@no_verify_option()
@config_option
@json_option
@handle_errors
def check_cmd(bundle: str, backend: str, precision: str, device: str, no_verify: bool, as_json: bool) -> None:
    """Run BUNDLE's golden samples through each artifact and compare with the FP32 reference.

    Exit code 1 when an artifact is outside its precision's tolerance.
    """
    from edgetl.errors import GateFailedError
    from edgetl.runtime.golden import check

    report = check(bundle, backend=backend, precision=precision, device=device, verify=not no_verify)
    if as_json:
        emit_json(report)
    else:
        rows = []
        for r in report["results"]:
            stats = r.get("outputs", {})
            worst = max((s["max_abs"] for s in stats.values()), default=None)
            agree = min((s["top1_agreement"] for s in stats.values() if "top1_agreement" in s), default=None)
            verdict = "skipped" if r["passed"] is None else ("ok" if r["passed"] else "FAIL")
            note = r.get("skipped") or "; ".join(r.get("failures", []))
            rows.append([r["artifact"], r["precision"], r.get("backend", "-"), worst, agree,
                         ", ".join(f"{k} {v}" for k, v in r["tolerance"].items()), verdict, note])
        say(format_table(["artifact", "precision", "backend", "max |diff|", "top-1 agree", "tolerance", "result",
                          "note"], rows))
        say(f"{report['samples']} golden samples: {'PASSED' if report['passed'] else 'FAILED'}")
    if not report["passed"]:
        raise GateFailedError(f"{bundle}: golden check failed")
