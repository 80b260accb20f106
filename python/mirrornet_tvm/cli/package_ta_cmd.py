"""`mirrornet package-ta`: build the generated CPM into the MirrorNet TA (OP-TEE dev kit + simulator)."""
from __future__ import annotations

import click


@click.command("package-ta")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--policy", type=click.Choice(["logits", "probs", "label"]), default="logits", show_default=True,
              help="What the TA returns: rectified logits, their softmax, or the top-1 label only.")
@click.option("--encrypt/--no-encrypt", default=None,
              help="Encrypt the TA image [default: encrypt when the dev kit can].")
@click.option("--shm-limit", type=click.IntRange(min=1), default=512 * 1024, show_default=True, metavar="BYTES",
              help="Largest shared buffer per invoke; larger taps go in LOAD_TAPS chunks.")
@click.option("--sim-only", is_flag=True, help="Build only the host-simulator TA (no OP-TEE dev kit needed).")
@click.option("--devkit", type=click.Path(file_okay=False), default=None,
              help="OP-TEE TA dev kit [default: $TA_DEV_KIT_DIR, else scripts/optee-env.sh devkit].")
@click.option("--sign-key", type=click.Path(dir_okay=False), default=None,
              help="PEM key to sign with [default: the dev kit's public test key].")
@click.option("--enc-key", default=None, metavar="HEX64",
              help="AES-256 TA encryption key [default: the dev kit's, derived from an all-zero HUK].")
@click.option("--ta-budget", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="Secure memory the TA may use [default: half of the Raspberry Pi 3's 8 MiB for TAs].")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def package_ta(build_dir, policy, encrypt, shm_limit, sim_only, devkit, sign_key, enc_key, ta_budget, quiet):
    """Build the CPM of BUILD_DIR (from `mirrornet compile`) into the MirrorNet trusted application.

    Writes BUILD_DIR/<uuid>.ta (signed by the OP-TEE dev kit, encrypted by default), BUILD_DIR/sim/<uuid>.sim
    (the same TA for the host simulator), BUILD_DIR/ta_build (the TA sources as built) and a "ta" record in
    BUILD_DIR/manifest.json (sizes, secure-memory footprint against the Raspberry Pi 3 budget).
    """
    from ..tee.package import package_ta as run

    res = run(build_dir, policy=policy, encrypt=encrypt, shm_limit=shm_limit, sim_only=sim_only,
              devkit=devkit, sign_key=sign_key, enc_key=enc_key, ta_budget=ta_budget, progress=not quiet)
    click.echo(f"TA {res.uuid}: policy {res.policy}, {res.max_invoke_bytes} bytes per invoke, "
               f"TA_STACK_SIZE {res.stack_size}, TA_DATA_SIZE {res.data_size}")
    click.echo(f"  simulator: {res.sim_ta} (stack peak {res.sim_peaks['stack_peak']} B, "
               f"heap peak {res.sim_peaks['heap_peak']} B)")
    if res.signed_ta is not None:
        elf, fp = res.elf, res.footprint
        click.echo(f"  OP-TEE:    {res.signed_ta} (signed{', encrypted' if res.encrypted else ', NOT encrypted'})")
        click.echo(f"  ELF: text {elf['text']} B, rodata {elf['rodata']} B, data {elf['data']} B, bss {elf['bss']} B; "
                   f"secure memory ~{fp['total'] / 1024:.0f} KiB of a {fp['budget'] / 1024:.0f} KiB budget "
                   f"(Raspberry Pi 3: {fp['rpi3_ta_ram'] / 2**20:.0f} MiB for all TAs)")
        if res.encrypted:
            click.echo("  note: the dev kit's default keys are public: what they protect is in ta/README.md")
