#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in this folder:
#  1. schema: `kubernetes-validate --strict` (PyPI, ships the schemas; no
#     cluster, no network) against K8S_VERSION (default 1.34.0), so unknown or
#     misspelt fields fail too;
#  2. consistency: the coordinator's LOCKSTEP_HOSTS equals the host
#     StatefulSet's pod names, the cluster ids agree, the host id comes from
#     metadata.name, the coordinator is an odd raft group (>= 3) whose
#     LOCKSTEP_PEERS, LOCKSTEP_ADVERTISE and the hosts' LOCKSTEP_COORDINATOR
#     name the same members under a headless Service, a PodDisruptionBudget
#     keeps its quorum; every probe is a grpc probe on the container port
#     named `health`, and LOCKSTEP_HEALTH_LISTEN (plaintext, so that the
#     kubelet can ask it with TLS on) listens there; each *_LISTEN port is the
#     container port of its name; the TLS variables are all set or none, on
#     both StatefulSets alike, name files on a read-only mount, and the hosts'
#     coordinator URLs use the matching scheme (deploy/README.md, "Mutual TLS").
# Exit 0 = valid; 1 = invalid; 3 = kubernetes-validate is not installed
# (`python3 -m pip install kubernetes-validate`).
set -euo pipefail
cd "$(dirname "$0")"
version="${K8S_VERSION:-1.34.0}"
files=(*.yaml)

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "validate.sh: kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)" >&2
  exit 3
fi
python3 -m kubernetes_validate --strict --quiet -k "$version" "${files[@]}"

python3 - "${files[@]}" <<'PY'
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def env(container):
    return {e["name"]: e for e in container.get("env", [])}
coord = by[("StatefulSet", "coordinator")]
hosts = by[("StatefulSet", "host")]
svc = by[("Service", "coordinator")]
cc = coord["spec"]["template"]["spec"]["containers"][0]
hc = hosts["spec"]["template"]["spec"]["containers"][0]
ce, he = env(cc), env(hc)
want = ",".join(f"host-{i}" for i in range(hosts["spec"]["replicas"]))
if ce["LOCKSTEP_HOSTS"]["value"] != want:
    errors.append(f"coordinator LOCKSTEP_HOSTS={ce['LOCKSTEP_HOSTS']['value']!r}, host pods are {want!r}")
if ce["LOCKSTEP_CLUSTER_ID"]["value"] != he["LOCKSTEP_CLUSTER_ID"]["value"]:
    errors.append("coordinator and hosts disagree on LOCKSTEP_CLUSTER_ID")
if he["LOCKSTEP_HOST_ID"].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
    errors.append("LOCKSTEP_HOST_ID must come from metadata.name")
ns = svc["metadata"]["namespace"]
port = svc["spec"]["ports"][0]["port"]
# The replicated coordinator: raft node N+1 is pod coordinator-N under the
# headless Service, and LOCKSTEP_PEERS, LOCKSTEP_ADVERTISE and the hosts'
# LOCKSTEP_COORDINATOR must all name the same members.
peers_svc = by.get(("Service", coord["spec"]["serviceName"]), {}).get("spec", {})
if peers_svc.get("clusterIP") != "None" or not peers_svc.get("publishNotReadyAddresses"):
    errors.append("coordinator serviceName must be a headless Service with publishNotReadyAddresses (raft peers find each other before ready)")
n = coord["spec"]["replicas"]
if n < 3 or n % 2 == 0:
    errors.append(f"coordinator replicas={n}: a raft group wants an odd number, at least 3")
cname, peers_name = coord["metadata"]["name"], coord["spec"]["serviceName"]
members = [f"{cname}-{i}.{peers_name}.{ns}.svc:{port}" for i in range(n)]
want_peers = ",".join(f"{i + 1}={m}" for i, m in enumerate(members))
if ce.get("LOCKSTEP_PEERS", {}).get("value") != want_peers:
    errors.append(f"coordinator LOCKSTEP_PEERS={ce.get('LOCKSTEP_PEERS', {}).get('value')!r}, want {want_peers!r}")
if ce.get("LOCKSTEP_NODE_ID", {}).get("value") != "auto":
    errors.append("coordinator LOCKSTEP_NODE_ID must be 'auto' (node id from the StatefulSet ordinal)")
names = [e["name"] for e in cc.get("env", [])]
if ce.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
    errors.append("coordinator POD_NAME must come from metadata.name")
elif ce.get("LOCKSTEP_ADVERTISE", {}).get("value") != f"$(POD_NAME).{peers_name}.{ns}.svc:{port}":
    errors.append(f"coordinator LOCKSTEP_ADVERTISE must be $(POD_NAME).{peers_name}.{ns}.svc:{port}")
elif names.index("POD_NAME") > names.index("LOCKSTEP_ADVERTISE"):
    errors.append("POD_NAME must be defined before LOCKSTEP_ADVERTISE ($(VAR) expands only earlier variables)")
# Mutual TLS: all three files or none (the daemons refuse anything else),
# on both StatefulSets alike (a TLS member and a plaintext one cannot talk),
# each on a read-only mount. The hosts dial a bare host:port with TLS when
# they have it; an explicit http:// with TLS, or https:// without, is refused.
TLS_VARS = ("LOCKSTEP_TLS_CERT", "LOCKSTEP_TLS_KEY", "LOCKSTEP_TLS_CA")
tls_on = {}
for ss, c, e in ((coord, cc, ce), (hosts, hc, he)):
    name = ss["metadata"]["name"]
    given = [v for v in TLS_VARS if v in e]
    if given and len(given) != len(TLS_VARS):
        errors.append(f"{name}: {', '.join(given)} without {', '.join(v for v in TLS_VARS if v not in e)}: give all three or none")
    tls_on[name] = bool(given)
    mounts = [m for m in c.get("volumeMounts", []) if m.get("readOnly")]
    for v in given:
        path = e[v].get("value", "")
        if not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
            errors.append(f"{name}: {v}={path!r} is not on a readOnly volumeMount")
if tls_on[cname] != tls_on[hosts["metadata"]["name"]]:
    errors.append("mutual TLS is on for one StatefulSet and off for the other: a TLS daemon and a plaintext one cannot talk")
host_tls = tls_on[hosts["metadata"]["name"]]
schemes = ("https://", "") if host_tls else ("http://", "")
urls = he["LOCKSTEP_COORDINATOR"]["value"].split(",")
if len(urls) != len(members) or not all(any(u == s + m for s in schemes) for u, m in zip(urls, members)):
    errors.append(f"host LOCKSTEP_COORDINATOR must list every coordinator member: {','.join(schemes[0] + m for m in members)}"
                  + f" (or bare host:port; TLS is {'on' if host_tls else 'off'})")
pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"
        and d["spec"].get("selector", {}).get("matchLabels") == coord["spec"]["selector"]["matchLabels"]]
if len(pdbs) != 1 or pdbs[0]["spec"].get("maxUnavailable") != 1:
    errors.append("the coordinator needs one PodDisruptionBudget with maxUnavailable: 1 (keeps the quorum)")
if hosts["spec"].get("podManagementPolicy") != "Parallel":
    errors.append("host StatefulSet must use podManagementPolicy: Parallel")
for ss in (coord, hosts):
    name = ss["metadata"]["name"]
    if ss["spec"]["serviceName"] not in {n for (k, n) in by if k == "Service"}:
        errors.append(f"{name}: serviceName {ss['spec']['serviceName']} has no Service")
    spec = ss["spec"]["template"]["spec"]
    if not spec.get("terminationGracePeriodSeconds"):
        errors.append(f"{name}: no terminationGracePeriodSeconds")
    for c in spec["containers"]:
        declared = [p["containerPort"] for p in c.get("ports", [])]
        if len(set(declared)) != len(declared):
            errors.append(f"{name}/{c['name']}: a container port is declared twice: {declared}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        # The probes ask the plaintext health-only listener: the kubelet's
        # grpc probe speaks no TLS (and takes a number, not a port name).
        health = ports.get("health")
        if health is None:
            errors.append(f"{name}/{c['name']}: no container port named health (LOCKSTEP_HEALTH_LISTEN, for the probes)")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe, {}).get("grpc", {}).get("port")
            if p is None or p != health:
                errors.append(f"{name}/{c['name']}: {probe} is not a grpc probe on the health port ({health})")
        # Every listener the daemon opens is the declared port of its name.
        e = env(c)
        for var, port_name in (("LOCKSTEP_LISTEN", "grpc"), ("LOCKSTEP_INGEST_LISTEN", "ingest"),
                               ("LOCKSTEP_METRICS_LISTEN", "metrics"), ("LOCKSTEP_HEALTH_LISTEN", "health")):
            if port_name not in ports and var not in e:
                continue
            if var not in e:
                errors.append(f"{name}/{c['name']}: container port {port_name} is declared but {var} is not set")
                continue
            value = e[var].get("value", "")
            if value.rsplit(":", 1)[-1] != str(ports.get(port_name)):
                errors.append(f"{name}/{c['name']}: {var}={value!r} does not listen on container port {port_name} ({ports.get(port_name)})")
        if not c.get("resources", {}).get("requests"):
            errors.append(f"{name}/{c['name']}: no resource requests")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        claims = {t["metadata"]["name"] for t in ss["spec"].get("volumeClaimTemplates", [])}
        if not claims or not claims <= mounts:
            errors.append(f"{name}/{c['name']}: volume claim templates {claims} not all mounted")
        volumes = claims | {v["name"] for v in spec.get("volumes", [])}
        if not mounts <= volumes:
            errors.append(f"{name}/{c['name']}: volumeMounts {sorted(mounts - volumes)} name no volume of the pod")
for d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != ns:
        errors.append(f"{d['kind']}/{d['metadata']['name']} is not in namespace {ns}")
if errors:
    print("validate.sh: inconsistent manifests:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"validate.sh: {len(docs)} resources valid and consistent")
PY
