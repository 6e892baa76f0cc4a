"""Checks deploy/k8s offline: renders the kustomization, validates every object against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors) and runs checkov's
Kubernetes checks on what `kubectl apply -k` would apply. Run by .ci/check-deploy.sh, which
installs the two tools; exits non-zero on any finding.

The rendering covers the part of kustomize this kustomization uses (`namespace`, `resources`,
`images`) and refuses any other key, so a kustomization that grows past it fails here instead
of being checked wrongly. Where kubectl is installed, its own `kubectl kustomize` output must
equal this rendering.
"""

import argparse
import copy
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

KNOWN_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}
# Kinds that have no namespace (the ones these manifests could plausibly hold).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}
# The oldest Kubernetes minor release the manifests must still apply to, and the newest the
# installed schemas know.
OLDEST = "1.29"

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def split_image(image):
    """'reg:5000/name:tag' -> ('reg:5000/name', ':tag'); 'name@sha256:..' -> ('name', '@sha256:..')."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    m = re.match(r"^(.*?)(:[^:/]+)?$", image)
    return m.group(1), m.group(2) or ""


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec")


def render(kdir):
    """The objects `kubectl apply -k kdir` would apply, in kustomize's sense for our keys."""
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kust) - KNOWN_KEYS
    if unknown:
        fail(f"kustomization.yaml: keys {sorted(unknown)} are not rendered by {__file__}; extend it")
    images = {i["name"]: i for i in kust.get("images", [])}
    used_images = set()
    objects = []
    for resource in kust.get("resources", []):
        for obj in load_all(kdir / resource):
            obj = copy.deepcopy(obj)
            if "namespace" in kust and obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kust["namespace"]
            spec = pod_spec(obj)
            for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
                name, suffix = split_image(container["image"])
                if name not in images:
                    fail(f"{resource}: image {container['image']} is not a parameter (no `images:` entry)")
                    continue
                used_images.add(name)
                entry = images[name]
                new_name = entry.get("newName", name)
                if "digest" in entry:
                    suffix = "@" + entry["digest"]
                elif "newTag" in entry:
                    suffix = ":" + str(entry["newTag"])
                container["image"] = new_name + suffix
            objects.append((resource, obj))
    for name in set(images) - used_images:
        fail(f"kustomization.yaml: images entry {name} matches no container")
    return kust, objects


def check_version(kust, root):
    """The default image tag is the crate's version, so the two cannot drift apart."""
    version = tomllib.loads((root / "Cargo.toml").read_text(encoding="utf-8"))["package"]["version"]
    for entry in kust.get("images", []):
        tag = str(entry.get("newTag", ""))
        if tag and tag != version:
            fail(f"kustomization.yaml: image {entry['name']} tag {tag} is not Cargo.toml's version {version}")


def validate(label, obj):
    newest = kubernetes_validate.latest_version()
    before = len(failures)
    for version in (OLDEST, newest):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{label} {obj['kind']}/{obj['metadata']['name']} against Kubernetes {version}: "
                 f"{e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{label} {obj['kind']} {obj['apiVersion']}: no schema in Kubernetes {version}")
    if len(failures) == before:
        print(f"ok   {label} {obj['kind']}/{obj['metadata']['name']}: valid for Kubernetes {OLDEST} and {newest}")


def compare_with_kubectl(kdir, objects):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("note kubectl not installed: the rendering is not compared with kustomize's")
        return
    out = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kubectl kustomize: {out.stderr.strip()}")
        return
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    ours = sorted((o for _, o in objects), key=key)
    if theirs != ours:
        fail("kubectl kustomize renders differently from this script (compare both outputs)")
    else:
        print(f"ok   kubectl kustomize renders the same {len(ours)} objects")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="deploy/k8s", help="the kustomization folder")
    parser.add_argument("--checkov", default="checkov", help="the checkov command")
    args = parser.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    kdir = (root / args.dir).resolve()

    kust, objects = render(kdir)
    check_version(kust, root)
    for resource, obj in objects:
        validate(resource, obj)
    # Files beside the kustomization that it does not include (the optional cache claim) are
    # applied by hand: they must be valid too.
    listed = set(kust.get("resources", [])) | {"kustomization.yaml"}
    extra = sorted(p for p in kdir.glob("*.yaml") if p.name not in listed)
    for path in extra:
        for obj in load_all(path):
            validate(path.name, obj)
    compare_with_kubectl(kdir, objects)

    # checkov reads the rendered objects (namespace and image set, as applied) and the extras.
    with tempfile.TemporaryDirectory(prefix="clipserve-k8s-") as tmp:
        rendered = pathlib.Path(tmp) / "rendered.yaml"
        rendered.write_text(yaml.safe_dump_all([o for _, o in objects], sort_keys=False))
        for path in extra:
            shutil.copy(path, tmp)
        cmd = [args.checkov, "--directory", tmp, "--framework", "kubernetes", "--skip-download",
               "--compact", "--quiet"]
        print("run  " + " ".join(cmd[:1] + ["--directory", "<rendered>"] + cmd[3:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            fail("checkov found problems (above); fix them or add a checkov.io/skipN annotation "
                 "with the reason beside the resource")

    if failures:
        print(f"{len(failures)} deployment check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("deployment checks passed")


if __name__ == "__main__":
    main()
