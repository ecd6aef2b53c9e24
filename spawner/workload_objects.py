"""Kubernetes manifests of workloads (a training job's processes), as pure functions.

Each process of a workload group is a pod that runs once on the user's home claim,
through a shell that writes its output both to the log on the home and to the
container log and hands small files back on that log; the group's headless Service
gives every pod a DNS name from the start. Like ``objects`` (whose labels and helpers
these share), every builder returns a plain dict in the API's own JSON shape and
nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

from .objects import HOSTNAME_LABEL, LABEL_COMPONENT, env_from_secret, gpu_limits

LABEL_GROUP = "gpulab.io/group"
"""On a workload's pods: the group they belong to (``job-5``), which its Service selects."""
LABEL_PROCESS = "gpulab.io/process"
"""On a workload's pod: which process of its group it is (``worker-0``, ``install``)."""
CONTAINER = "main"
"""The name of a workload pod's one container (whose log the hub follows)."""

# The pod's shell: $1 log (relative to $HOME), $2 header, $3 working folder (relative),
# $4 files to hand back (space separated), then the command. Output goes both to the log
# on the home (kept with the user's files) and to the container log (which the hub
# follows), through a pipe beside the log (/tmp may not be writable); tee ignores the
# stop's TERM so the last lines are kept. TERM is passed on to the command (the runtime
# signals only the container's first process). With $GPULAB_METRICS_READER (the source
# of gpulab.hub.workloads.tfevents, kept from the command's environment) the job's
# TensorBoard scalars are read into its metrics file after the command, unless it was
# stopped. After that, the files to hand back (64 KiB at most each) are printed base64
# on the container log alone.
WORKLOAD_SCRIPT = """log=$HOME/$1 header=$2 workdir=$3 outputs=$4
shift 4
mkdir -p -- "${log%/*}" || exit 2
fifo=$log.$$.pipe
mkfifo -m 600 -- "$fifo" || exit 2
( trap '' TERM INT; exec tee -a -- "$log" ) <"$fifo" &
tee_pid=$!
exec 3>&1 >"$fifo" 2>&1
rm -f -- "$fifo"
[ -z "$header" ] || printf '%s\\n' "$header"
code=2
reader=$GPULAB_METRICS_READER
unset GPULAB_METRICS_READER
if [ -z "$workdir" ] || cd -- "$HOME/$workdir"; then
  "$@" &
  child=$!
  trap 'stopped=1; kill -TERM "$child" 2>/dev/null' TERM INT
  wait "$child"
  code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
  [ -z "$stopped" ] ||
    printf '%s\\n' "==> gpulab: stopped by the hub (SIGTERM; exit code $code): its status at the hub says why"
  if [ -n "$reader" ] && [ -z "$stopped" ]; then
    if command -v python3 >/dev/null 2>&1; then python3 -c "$reader"
    else echo "==> gpulab: no python3 in the image: the TensorBoard metrics under $GPULAB_METRICS_EVENTS were not read"; fi
  fi
else
  echo "gpulab: cannot enter ~/$workdir"
fi
exec >&3 2>&3 3>&-
wait "$tee_pid"
for f in $outputs; do
  [ -f "$HOME/$f" ] && [ "$(wc -c <"$HOME/$f")" -le 65536 ] &&
    printf '%s %s %s\\n' "==> gpulab: file" "$f" "$(base64 <"$HOME/$f" | tr -d '\\n')"
done
exit "$code"
"""
HANDED_BACK = "==> gpulab: file "
"""How a workload pod's shell prints a file it hands back, on its container log."""


def _literal(text: str) -> str:
    """``text`` as the kubelet passes it on: ``$(VAR)`` in commands and values is expanded
    unless written ``$$(VAR)``."""
    return text.replace("$", "$$")


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict:
    """An ``ownerReferences`` entry: the object goes when its owner is deleted."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def workload_service(
    name: str,
    namespace: str,
    group: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict:
    """The headless Service of a workload's pods: a pod with hostname ``worker-0`` is
    ``worker-0.<name>.<namespace>.svc.<cluster domain>``, published before it is ready
    (a job's processes look each other up while they start)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "workload", LABEL_GROUP: group},
            "annotations": dict(annotations),
        },
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_GROUP: group},
            "publishNotReadyAddresses": True,
        },
    }


def workload_pod(
    generate_name: str,
    namespace: str,
    *,
    group: str,
    process: str,
    subdomain: str,
    image: str,
    pull_policy: str,
    argv: list[str],
    log: str,
    header: str = "",
    workdir: str = "",
    outputs: tuple[str, ...] = (),
    env: Mapping[str, str],
    env_secret: str = "",
    home_claim: str,
    home_mount: str,
    uid: int | None,
    gid: int | None,
    gpus: int = 0,
    gpu_resource: str = "nvidia.com/gpu",
    node: str = "",
    ports: tuple[int, ...] = (),
    tolerations: list[dict] | None = None,
    grace_seconds: int = 5,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    owner: Mapping[str, str] | None = None,
) -> dict:
    """One process of a workload (a job's replica, or its package install) as a pod.

    It runs once (``restartPolicy: Never``: the job's restart policy makes a new pod), as
    ``uid``/``gid`` on the user's home claim, with ``gpus`` of ``gpu_resource`` on the
    node the ledger granted them on. Its hostname is ``process`` in the group's headless
    Service ``subdomain``. ``env`` is set literally (``$`` is not expanded) over the
    group's shared Secret ``env_secret``.
    """
    container: dict = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["/bin/sh", "-c", _literal(WORKLOAD_SCRIPT), "gpulab-workload"],
        "args": [_literal(a) for a in [log, header, workdir, " ".join(outputs), *argv]],
        "env": [{"name": k, "value": _literal(v)} for k, v in sorted(env.items())],
        "workingDir": home_mount,
        "volumeMounts": [{"name": "home", "mountPath": home_mount}],
        "resources": {"limits": gpu_limits(gpu_resource, gpus)} if gpus else {},
    }
    if env_secret:
        container["envFrom"] = env_from_secret(env_secret)
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    security: dict = {}
    if uid is not None:
        security["runAsUser"] = uid
    if gid is not None:
        security.update(runAsGroup=gid, fsGroup=gid)
    pod_spec: dict = {
        "hostname": process,
        "subdomain": subdomain,
        "containers": [container],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_seconds,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": home_claim}}],
    }
    if security:
        pod_spec["securityContext"] = security
    if node:
        pod_spec["nodeSelector"] = {HOSTNAME_LABEL: node}
    if tolerations:
        pod_spec["tolerations"] = list(tolerations)
    metadata: dict = {
        "generateName": generate_name,
        "namespace": namespace,
        "labels": {
            **labels,
            LABEL_COMPONENT: "workload",
            LABEL_GROUP: group,
            LABEL_PROCESS: process,
        },
        "annotations": dict(annotations),
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
