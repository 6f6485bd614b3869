"""The platform manifests hang together: deploy/istio-gateway/ (the filter in the Istio ingress
gateway), deploy/istio-ambient/ (in an ambient waypoint) and deploy/envoy-gateway/ (in the Envoy
of an Envoy Gateway Gateway). No cluster is started; each test checks what would otherwise only
fail on one.

- every file parses, and each folder has the objects its README lists;
- the filter's configuration in each (the WasmPlugin's pluginConfig, the EnvoyExtensionPolicy's
  wasm config) passes the filter's own check, examples/check_config.rs (as in
  test_deploy_files.py), and makes it read exactly the variables the proxy hands the VM;
- the secrets reach that proxy by the names the filter reads (BFF_CLIENT_SECRET,
  BFF_COOKIE_KEYS), from one Secret in the proxy's own namespace, through the proxy container's
  environment, and the objects that do it are wired to the proxy the filter runs in;
- idp_cluster names the cluster the manifests make, by each platform's naming rule: Istio's
  outbound|<port>||<host> in a gateway, inbound-vip|<port>|http|<host> in a waypoint, Envoy
  Gateway's httproute/<ns>/<route>/rule/<index>; and that cluster speaks TLS to the IdP;
- the ambient WasmPlugin attaches with targetRefs and has no selector;
- every module image is pinned by a sha256 digest, and fails closed (FAIL_CLOSE, failOpen false);
- no real secret in any file.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from harness.procs import REPO
from test_deploy_files import SECRET_ENV, check_config, run_check_config, walk  # noqa: F401

DEPLOY = REPO / "deploy"
GATEWAY_DIR = DEPLOY / "istio-gateway"
AMBIENT_DIR = DEPLOY / "istio-ambient"
EG_DIR = DEPLOY / "envoy-gateway"
PLATFORMS = {"istio-gateway": GATEWAY_DIR, "istio-ambient": AMBIENT_DIR,
             "envoy-gateway": EG_DIR}
PLATFORM_YAMLS = sorted(p for d in PLATFORMS.values() for p in d.rglob("*.yaml"))

ISTIO_GATEWAY_LABELS = {"istio": "ingressgateway"}
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# What the platform folders are made of (and the READMEs' tables list).
EXPECTED_KINDS = {
    "istio-gateway": ["Deployment", "DestinationRule", "Secret", "ServiceEntry", "WasmPlugin"],
    "istio-ambient": ["ConfigMap", "DestinationRule", "Gateway", "Secret", "Service",
                      "ServiceEntry", "WasmPlugin"],
    "envoy-gateway": ["Backend", "BackendTLSPolicy", "BackendTrafficPolicy",
                      "EnvoyExtensionPolicy", "EnvoyProxy", "Gateway", "HTTPRoute", "HTTPRoute",
                      "Secret", "SecurityPolicy"],
}


# --- reading the files ---------------------------------------------------------------------

def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def objects(platform: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(PLATFORMS[platform].rglob("*.yaml"))
            for doc in load_all(path)]


def the(platform: str, kind: str, name: str | None = None) -> dict:
    """The one object of this kind (and name) in the platform's folder."""
    found = [doc for _, doc in objects(platform)
             if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {platform}, found {len(found)}"
    return found[0]


def ns(obj: dict) -> str:
    return obj["metadata"]["namespace"]


def filter_config(platform: str) -> tuple[dict, set[str]]:
    """The filter's configuration in the platform's manifests, and the names of the variables
    the proxy copies from its environment into the VM."""
    if platform == "envoy-gateway":
        (wasm,) = the(platform, "EnvoyExtensionPolicy")["spec"]["wasm"]
        return wasm["config"], set(wasm["env"]["hostKeys"])
    spec = the(platform, "WasmPlugin")["spec"]
    return spec["pluginConfig"], {e["name"] for e in spec["vmConfig"]["env"]
                                  if e.get("valueFrom") == "HOST" and "value" not in e}


def issuer_host(platform: str) -> str:
    return urlsplit(filter_config(platform)[0]["issuer"]).hostname


def secret_values(secret: dict) -> dict[str, str]:
    return {**secret.get("stringData", {}),
            **{k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}}


def containers(pod_template_owner: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_template_owner["spec"]["template"]["spec"]["containers"]}


def proxy_env_and_namespace(platform: str) -> tuple[list[dict], str]:
    """The env entries the manifests add to the container the filter runs in, and the namespace
    that container runs in (where its secretKeyRefs are read)."""
    if platform == "istio-gateway":
        deployment = the(platform, "Deployment")
        plugin = the(platform, "WasmPlugin")
        # The patch is for the gateway the WasmPlugin selects, in the WasmPlugin's namespace.
        assert plugin["spec"]["selector"]["matchLabels"] == ISTIO_GATEWAY_LABELS
        assert deployment["metadata"]["name"] == "istio-ingressgateway"
        assert ns(deployment) == ns(plugin)
        return containers(deployment)["istio-proxy"]["env"], ns(deployment)
    if platform == "istio-ambient":
        gateway = the(platform, "Gateway")
        ref = gateway["spec"]["infrastructure"]["parametersRef"]
        assert (ref["group"], ref["kind"]) == ("", "ConfigMap"), ref
        overlay = the(platform, "ConfigMap", ref["name"])
        assert ns(overlay) == ns(gateway), "istiod reads the ConfigMap in the Gateway's namespace"
        deployment = yaml.safe_load(overlay["data"]["deployment"])
        # The waypoint's own Deployment runs in the Gateway's namespace.
        return containers(deployment)["istio-proxy"]["env"], ns(gateway)
    proxy = the(platform, "EnvoyProxy")
    kubernetes = proxy["spec"]["provider"]
    assert kubernetes["type"] == "Kubernetes"
    env = kubernetes["kubernetes"]["envoyDeployment"]["container"]["env"]
    # Envoy Gateway's default deploy mode runs every Envoy in its own namespace.
    return env, "envoy-gateway-system"


# --- the files parse, and are the ones the READMEs describe ---------------------------------

@pytest.mark.parametrize("path", PLATFORM_YAMLS, ids=rel)
def test_platform_yaml_files_parse(path):
    docs = load_all(path)
    assert docs, f"{rel(path)} is empty"
    assert all(isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")
               and doc["metadata"].get("name") and doc["metadata"].get("namespace")
               for doc in docs), f"{rel(path)}: an object without apiVersion, kind, name, namespace"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_has_its_objects_and_a_readme_naming_every_file(platform):
    assert sorted(doc["kind"] for _, doc in objects(platform)) == EXPECTED_KINDS[platform]
    readme = (PLATFORMS[platform] / "README.md").read_text()
    for path in PLATFORMS[platform].rglob("*.yaml"):
        name = str(path.relative_to(PLATFORMS[platform]))
        assert f"[`{name}`]({name})" in readme, f"{platform}/README.md does not list {name}"
    assert re.search(r"Built against .* \d+\.\d+ and newer", readme), (
        f"{platform}/README.md does not say which versions it was built against")
    assert "scripts/oci-image" in readme


def test_the_root_readme_layout_lists_the_platform_folders():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for directory in PLATFORMS.values():
        assert re.search(rf"^{re.escape(rel(directory))}/ ", layout, re.M), rel(directory)


# --- the filter accepts each configuration, and gets its secrets ----------------------------

@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_filter_accepts_each_platforms_configuration(check_config, platform):  # noqa: F811
    config, provided = filter_config(platform)
    read = run_check_config(check_config, json.dumps(config))
    assert read == SECRET_ENV, f"the configuration makes the filter read {read}"
    assert provided == read, f"the VM gets {provided}, the filter reads {read}"
    assert "client_secret" not in config and "cookie_keys" not in config, (
        "secrets belong in the environment, not in a shipped configuration")
    redirect = urlsplit(config["redirect_uri"])
    assert (redirect.scheme, redirect.hostname) == ("https", "app.example.com"), (
        "the callback is on the app's host, where the browser reached the proxy")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_secrets_reach_the_proxy_from_one_secret_in_its_namespace(platform):
    env, proxy_namespace = proxy_env_and_namespace(platform)
    secret = the(platform, "Secret")
    assert ns(secret) == proxy_namespace, (
        f"the Secret is in {ns(secret)}, the proxy (and its secretKeyRefs) in {proxy_namespace}")
    values = secret_values(secret)
    assert set(values) == SECRET_ENV
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert set(refs) == SECRET_ENV, refs
    assert not [e for e in env if e["name"] in SECRET_ENV and "value" in e], "a literal secret"
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"], (name, ref)
        assert ref["key"] == name, (name, ref)


def test_envoy_gateway_proxy_settings_reach_the_filters_envoy():
    """The EnvoyProxy with the env is the one of the Gateway whose route carries the filter."""
    gateway = the("envoy-gateway", "Gateway")
    ref = gateway["spec"]["infrastructure"]["parametersRef"]
    assert (ref["group"], ref["kind"]) == ("gateway.envoyproxy.io", "EnvoyProxy")
    proxy = the("envoy-gateway", "EnvoyProxy", ref["name"])
    assert ns(proxy) == ns(gateway), "a Gateway's parametersRef is local to its namespace"
    policy = the("envoy-gateway", "EnvoyExtensionPolicy")
    (target,) = policy["spec"]["targetRefs"]
    assert (target["group"], target["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")
    route = the("envoy-gateway", "HTTPRoute", target["name"])
    assert ns(route) == ns(policy) == ns(gateway)
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]


def test_no_real_secret_in_any_platform_file():
    for platform in PLATFORMS:
        values = secret_values(the(platform, "Secret"))
        assert all(v.startswith("REPLACE") for v in values.values()), (platform, values)
        # A forgotten placeholder must make Envoy fail closed, not seal sessions with a key
        # published in this repository.
        try:
            usable = len(base64.b64decode(values["BFF_COOKIE_KEYS"], validate=True)) == 32
        except (binascii.Error, ValueError):
            usable = False
        assert not usable, f"{platform}: the BFF_COOKIE_KEYS placeholder is a valid key"
    for path in PLATFORM_YAMLS:
        text = path.read_text()
        assert "PRIVATE KEY" not in text, rel(path)
        for word in re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", text):
            try:
                decoded = base64.b64decode(word, validate=True)
            except (binascii.Error, ValueError):
                continue
            assert len(decoded) != 32 or set(word) <= set("0"), (
                f"{rel(path)}: {word} looks like a 32-byte key")


# --- the module: pinned by digest, failing closed --------------------------------------------

@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_module_image_is_pinned_by_digest_and_fails_closed(platform):
    if platform == "envoy-gateway":
        (wasm,) = the(platform, "EnvoyExtensionPolicy")["spec"]["wasm"]
        assert wasm["code"]["type"] == "Image"
        image = wasm["code"]["image"]
        url, sha256 = image["url"], image["sha256"]
        assert not url.startswith("oci://"), "Envoy Gateway takes registry/image@sha256:..."
        assert wasm["failOpen"] is False, "failOpen: false, written out"
        assert wasm["rootID"] == "bff"
    else:
        spec = the(platform, "WasmPlugin")["spec"]
        url, sha256 = spec["url"], spec["sha256"]
        assert url.startswith("oci://")
        assert spec["failStrategy"] == "FAIL_CLOSE", "FAIL_CLOSE, written out"
        assert spec["pluginName"] == "bff" and spec["phase"] == "AUTHN"
    # Pinned: a digest in the reference, and the same digest where the loader checks it.
    match = re.fullmatch(r"[^@:]+(?::\d+)?/[^@]+@" + DIGEST.pattern, url.removeprefix("oci://"))
    assert match, f"{platform}: {url} is not pinned by digest"
    assert sha256 == match.group(1), f"{platform}: url and sha256 carry different digests"
    # Every other image reference in the folder is pinned too (there is none today).
    for path, doc in objects(platform):
        for node in walk(doc):
            for key in ("image", "url"):
                value = node.get(key)
                if isinstance(value, str) and value != "auto" and ("/" in value):
                    assert DIGEST.search(value), f"{rel(path)}: {key} {value} not pinned"
    # The placeholder is the all-zero digest, and the file says where the real one comes from.
    source = next(p for p, d in objects(platform)
                  if d["kind"] in ("WasmPlugin", "EnvoyExtensionPolicy"))
    assert sha256 == "0" * 64, "the placeholder digest, until scripts/oci-image has run"
    assert "scripts/oci-image" in source.read_text()


# --- Istio ingress gateway -------------------------------------------------------------------

def test_istio_gateway_plugin_selects_the_gateway_and_matches_its_traffic():
    spec = the("istio-gateway", "WasmPlugin")["spec"]
    assert "targetRefs" not in spec
    # Istio counts a gateway's listeners as CLIENT traffic: SERVER would leave the gateway
    # without the filter.
    modes = {m.get("mode", "CLIENT_AND_SERVER") for m in spec.get("match", [])}
    assert modes <= {"CLIENT", "CLIENT_AND_SERVER"}, modes
    assert not any(m.get("ports") for m in spec.get("match", [])), "every gateway port"


def test_istio_gateway_idp_cluster_is_the_service_entrys_and_originates_tls():
    config, _ = filter_config("istio-gateway")
    host = issuer_host("istio-gateway")
    direction, port, subset, cluster_host = config["idp_cluster"].split("|")
    assert (direction, subset, cluster_host) == ("outbound", "", host)
    plugin = the("istio-gateway", "WasmPlugin")
    entry = the("istio-gateway", "ServiceEntry")
    rule = the("istio-gateway", "DestinationRule")
    # Visible to the gateway: in its namespace, exported there.
    for obj in (entry, rule):
        assert ns(obj) == ns(plugin)
        assert set(obj["spec"].get("exportTo", ["*"])) & {".", "*", ns(plugin)}
    assert host in entry["spec"]["hosts"]
    assert entry["spec"]["location"] == "MESH_EXTERNAL"
    assert int(port) in [p["number"] for p in entry["spec"]["ports"]]
    assert_originates_tls(rule, host, int(port))


def assert_originates_tls(rule: dict, host: str, port: int) -> None:
    assert rule["spec"]["host"] == host
    (tls,) = [s["tls"] for s in rule["spec"]["trafficPolicy"]["portLevelSettings"]
              if s["port"]["number"] == port]
    assert tls["mode"] == "SIMPLE" and tls["sni"] == host
    assert host in tls["subjectAltNames"] and tls["caCertificates"]


# --- Istio ambient waypoint ------------------------------------------------------------------

def test_ambient_plugin_attaches_to_the_waypoint_with_target_refs_and_no_selector():
    spec = the("istio-ambient", "WasmPlugin")["spec"]
    assert "selector" not in spec, "a waypoint ignores selector WasmPlugins"
    (target,) = spec["targetRefs"]
    assert (target["group"], target["kind"]) == ("gateway.networking.k8s.io", "Gateway")
    waypoint = the("istio-ambient", "Gateway", target["name"])
    assert ns(waypoint) == ns(the("istio-ambient", "WasmPlugin"))
    assert waypoint["spec"]["gatewayClassName"] == "istio-waypoint"
    assert waypoint["metadata"]["labels"]["istio.io/waypoint-for"] in ("service", "all")
    assert [(listener["port"], listener["protocol"])
            for listener in waypoint["spec"]["listeners"]] == [(15008, "HBONE")]
    # The ConfigMap comes before the Gateway that names it: istiod refuses a missing one.
    path = next(p for p, d in objects("istio-ambient") if d is not None and d["kind"] == "Gateway")
    kinds = [d["kind"] for d in load_all(path)]
    assert kinds.index("ConfigMap") < kinds.index("Gateway")


def test_ambient_app_service_goes_through_the_waypoint_from_the_ingress_too():
    waypoint = the("istio-ambient", "Gateway")["metadata"]["name"]
    labels = the("istio-ambient", "Service", "spa-bff")["metadata"]["labels"]
    assert labels["istio.io/use-waypoint"] == waypoint
    assert labels["istio.io/ingress-use-waypoint"] == "true"


def test_ambient_idp_cluster_is_the_waypoints_cluster_of_the_idp_service_entry():
    config, _ = filter_config("istio-ambient")
    host = issuer_host("istio-ambient")
    direction, port, subset, cluster_host = config["idp_cluster"].split("|")
    assert (direction, subset, cluster_host) == ("inbound-vip", "http", host)
    entry = the("istio-ambient", "ServiceEntry")
    waypoint = the("istio-ambient", "Gateway")
    # The waypoint serves (and so has a cluster for) the ServiceEntry only if it uses it.
    assert entry["metadata"]["labels"]["istio.io/use-waypoint"] == waypoint["metadata"]["name"]
    assert ns(entry) == ns(waypoint)
    assert host in entry["spec"]["hosts"]
    (entry_port,) = [p for p in entry["spec"]["ports"] if p["number"] == int(port)]
    assert entry_port["protocol"] == "HTTP", "an http cluster is made for HTTP ports"
    assert entry_port["targetPort"] == 443
    assert_originates_tls(the("istio-ambient", "DestinationRule"), host, int(port))


# --- Envoy Gateway ---------------------------------------------------------------------------

def envoy_gateway_route_cluster(route: dict, rule_index: int) -> str:
    """Envoy Gateway's name for the cluster of an HTTPRoute rule (irRouteDestinationName in
    internal/gatewayapi/helpers.go, used as the cluster name by the xDS translator)."""
    return f"httproute/{ns(route)}/{route['metadata']['name']}/rule/{rule_index}"


def test_envoy_gateway_idp_cluster_is_the_idp_routes_rule_cluster():
    config, _ = filter_config("envoy-gateway")
    host = issuer_host("envoy-gateway")
    backends = {b["metadata"]["name"]: b for _, b in objects("envoy-gateway")
                if b["kind"] == "Backend"}
    (backend,) = [b for b in backends.values()
                  if [e["fqdn"]["hostname"] for e in b["spec"]["endpoints"]] == [host]]
    assert [e["fqdn"]["port"] for e in backend["spec"]["endpoints"]] == [443]
    # The rules that send to the IdP's Backend, and the cluster each makes.
    made = {}
    for _, route in objects("envoy-gateway"):
        if route["kind"] != "HTTPRoute":
            continue
        for index, rule in enumerate(route["spec"]["rules"]):
            refs = rule.get("backendRefs", [])
            if any(r.get("kind") == "Backend" and r["name"] == backend["metadata"]["name"]
                   for r in refs):
                # One cluster for the rule only while its backends fold into one: a single
                # backendRef without filters of its own.
                assert len(refs) == 1 and not refs[0].get("filters"), refs
                assert refs[0]["group"] == "gateway.envoyproxy.io" and refs[0]["port"] == 443
                made[envoy_gateway_route_cluster(route, index)] = route
    assert config["idp_cluster"] in made, f"{config['idp_cluster']} is not one of {list(made)}"
    idp_route = made[config["idp_cluster"]]
    # In the Envoy that runs the filter: attached to the same Gateway as the app's route, on a
    # host that Gateway's listener takes.
    gateway = the("envoy-gateway", "Gateway")
    assert [p["name"] for p in idp_route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    listener_hosts = {listener.get("hostname") for listener in gateway["spec"]["listeners"]}
    assert set(idp_route["spec"]["hostnames"]) <= listener_hosts
    # No browser request goes through it: a SecurityPolicy denies every one, and the filter is
    # not on that route.
    denied = [p for _, p in objects("envoy-gateway") if p["kind"] == "SecurityPolicy"
              and any(t["kind"] == "HTTPRoute" and t["name"] == idp_route["metadata"]["name"]
                      for t in p["spec"]["targetRefs"])]
    (policy,) = denied
    assert policy["spec"]["authorization"]["defaultAction"] == "Deny"
    assert not policy["spec"]["authorization"].get("rules")
    (target,) = the("envoy-gateway", "EnvoyExtensionPolicy")["spec"]["targetRefs"]
    assert target["name"] != idp_route["metadata"]["name"]


def test_envoy_gateway_idp_backend_speaks_tls_to_the_idp():
    host = issuer_host("envoy-gateway")
    backend = the("envoy-gateway", "Backend")
    tls = the("envoy-gateway", "BackendTLSPolicy")
    (target,) = tls["spec"]["targetRefs"]
    assert (target["group"], target["kind"], target["name"]) == (
        "gateway.envoyproxy.io", "Backend", backend["metadata"]["name"])
    assert ns(tls) == ns(backend)
    validation = tls["spec"]["validation"]
    assert validation["hostname"] == host
    assert validation.get("wellKnownCACertificates") == "System" or validation.get(
        "caCertificateRefs")
