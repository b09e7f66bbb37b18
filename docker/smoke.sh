#!/usr/bin/env bash
# Build nfx's Dockerfile for real and run it: a CPU base made from Debian's packages (debootstrap,
# no registry image; docker/cpu-base.Containerfile), the project's Dockerfile built on it with
# `--build-arg BASE=…` by buildah, then inside the image, as uid 1000 with /data read-only and
# /runs, /cache writable: nfx --version, the quickstart (finetune → evaluate → export on
# sample_data/) and nfx predict with the exported ONNX model. Checks that the run folder's files
# belong to uid 1000 and that nothing was written outside /runs and /cache.
#
#   sudo docker/smoke.sh        needs root, buildah and debootstrap (apt-get install buildah debootstrap)
#
# NFX_SMOKE_WORK: where the rootfs, the runs and the log go (default /var/tmp/nfx-smoke);
# NFX_SMOKE_NO_BUILD=1 runs the checks on the image built last time.
# Where pip is configured with local wheel folders or indexes (/etc/pip.conf, /opt/wheels, …),
# those (and the CA bundle pip is told to trust) are bind-mounted read-only into every build step,
# so pip inside finds what pip here finds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${NFX_SMOKE_WORK:-/var/tmp/nfx-smoke}
B=(buildah --storage-driver vfs)
log() { echo "[smoke $(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$WORK"

VOLS=()
for p in /etc/pip.conf /etc/xdg/pip /opt/wheels /opt/pypi /opt/pypi-more /etc/ssl/certs/ca-certificates.crt; do
  if [ -e "$p" ]; then VOLS+=(-v "$p:$p:ro"); fi
done

if ! "${B[@]}" inspect --type image localhost/nfx-cpu-base >/dev/null 2>&1; then
  mkdir -p "$WORK/base"
  if [ ! -f "$WORK/base/rootfs.tar" ]; then
    log "debootstrap: Debian bookworm minbase + python3"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" \
      http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
    tar -C "$WORK/rootfs" -cf "$WORK/base/rootfs.tar.part" . && mv "$WORK/base/rootfs.tar.part" "$WORK/base/rootfs.tar"
    rm -rf "$WORK/rootfs"
  fi
  log "base image (torch from pip)"
  "${B[@]}" bud --isolation chroot "${VOLS[@]}" -f "$ROOT/docker/cpu-base.Containerfile" \
    -t localhost/nfx-cpu-base "$WORK/base"
fi

log "the project's Dockerfile on that base"
# each rebuild leaves the previous localhost/nfx:cpu untagged (7 GB with vfs): drop those first,
# or a few rebuilds fill the disk ("no space left on device" when the build container is created)
"${B[@]}" rmi --prune >/dev/null 2>&1 || true
[ -n "${NFX_SMOKE_NO_BUILD:-}" ] || "${B[@]}" bud --isolation chroot "${VOLS[@]}" --build-arg BASE=localhost/nfx-cpu-base \
  -f "$ROOT/Dockerfile" -t localhost/nfx:cpu "$ROOT"

RUNS="$WORK/runs"; CACHE="$WORK/cache"
rm -rf "$RUNS" "$CACHE"; mkdir -p "$RUNS" "$CACHE"; chown 1000:1000 "$RUNS" "$CACHE"
ctr=$("${B[@]}" from localhost/nfx:cpu)
trap '"${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
# buildah 1.28 shadows an image's VOLUME paths with empty anonymous volumes in `buildah run`, even
# when a bind mount targets them; this working container drops the declarations, so the bind mounts
# below land on /data, /runs and /cache as `docker run -v` puts them (the image itself is unchanged)
"${B[@]}" config --volume /data- --volume /runs- --volume /cache- "$ctr"
mnt=$("${B[@]}" mount "$ctr")
stamp="$WORK/stamp"; touch "$stamp"; sleep 1
: >"$WORK/run.log"
run() {
  "${B[@]}" run --isolation chroot --user 1000:1000 \
    -v "$ROOT/sample_data:/data:ro" -v "$RUNS:/runs" -v "$CACHE:/cache" "$ctr" -- "$@" 2>&1 | tee -a "$WORK/run.log"
  return "${PIPESTATUS[0]}"
}
log "nfx --version"; run nfx --version
log "quickstart in the image"
run nfx finetune /data/dicom --arch nf_resnet26 --no-pretrained --size 96 --epochs 6 --name quickstart
run nfx evaluate /runs/quickstart
run nfx export /runs/quickstart --onnx
run nfx predict /runs/quickstart/model.onnx /data/png/glaucoma --out /runs/predictions.csv
log "checks"
if grep -n -E "Permission denied|Traceback|MPLCONFIGDIR|Read-only file system" "$WORK/run.log"; then
  echo "smoke: the commands inside the image complained (above)" >&2; exit 1
fi
bad_owner=$(find "$RUNS" "$CACHE" ! -uid 1000 | head -5)
[ -z "$bad_owner" ] || { echo "smoke: files not owned by uid 1000: $bad_owner" >&2; exit 1; }
outside=$(find "$mnt" -xdev -newer "$stamp" -type f ! -path "$mnt/runs/*" ! -path "$mnt/cache/*" \
  ! -path "$mnt/data/*" ! -path "$mnt/tmp/*" ! -path "$mnt/proc/*" ! -path "$mnt/dev/*" ! -path "$mnt/etc/resolv.conf" \
  ! -path "$mnt/etc/hosts" ! -path "$mnt/etc/hostname" | head -5)
[ -z "$outside" ] || { echo "smoke: written outside /runs and /cache: $outside" >&2; exit 1; }
python3 - "$RUNS" <<'PY'
import json, sys, csv
from pathlib import Path
runs = Path(sys.argv[1])
ev = json.loads((runs / "quickstart" / "evaluation.json").read_text())
rows = list(csv.DictReader(open(runs / "predictions.csv")))
print(f"smoke: quickstart in the image: accuracy {ev['accuracy']:.3f}, ROC AUC {ev['roc_auc']:.3f}; "
      f"{len(rows)} predictions from the exported ONNX model")
assert ev["accuracy"] >= 0.8 and rows and all(r["prediction"] for r in rows)
PY
log "ok"
