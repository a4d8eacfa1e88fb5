#!/usr/bin/env python3
"""Checks that the manifests agree with the CSI plugin and with each other: the driver's
name wherever Kubernetes objects name it, the socket paths each sidecar and the kubelet
use, the mounts the node plugin needs, and the metaserver addresses. Usage:

    python3 deploy/check.py DRIVER_NAME

Prints every disagreement and exits 1 if there is any."""

import glob
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    docs = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml")) + glob.glob(os.path.join(HERE, "examples", "*.yaml"))):
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def one(docs, kind, name):
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    return found[0] if len(found) == 1 else None


def flag(container, name):
    """The value of --name=value in a container's args (None if absent)."""
    for a in container.get("args", []):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def mount_path(container, volume):
    for m in container.get("volumeMounts", []):
        if m["name"] == volume:
            return m
    return None


def main():
    driver = sys.argv[1]
    docs = load()
    bad = []

    def expect(what, got, want):
        if got != want:
            bad.append(f"{what}: {got!r}, expected {want!r}")

    # The driver's name, wherever an object names it.
    expect("CSIDriver", [d["metadata"]["name"] for d in docs if d.get("kind") == "CSIDriver"], [driver])
    for d in docs:
        if d.get("kind") == "StorageClass":
            expect(f"StorageClass {d['metadata']['name']} provisioner", d.get("provisioner"), driver)
        if d.get("kind") == "VolumeSnapshotClass":
            expect(f"VolumeSnapshotClass {d['metadata']['name']} driver", d.get("driver"), driver)

    # The node plugin: its socket where the kubelet looks for it, and the mounts FUSE needs.
    node = one(docs, "DaemonSet", "meridian-csi-node")
    if node is None:
        bad.append("no DaemonSet meridian-csi-node")
    else:
        spec = node["spec"]["template"]["spec"]
        cs = {c["name"]: c for c in spec["containers"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        plugin, reg = cs.get("meridian-csi"), cs.get("node-driver-registrar")
        plugin_dir = f"/var/lib/kubelet/plugins/{driver}"
        expect("node socket-dir hostPath", vols["socket-dir"]["hostPath"]["path"], plugin_dir)
        expect("registrar --kubelet-registration-path", flag(reg, "kubelet-registration-path"), f"{plugin_dir}/csi.sock")
        sock = mount_path(plugin, "socket-dir")["mountPath"] + "/csi.sock"
        expect("node plugin --endpoint", flag(plugin, "endpoint"), "unix://" + sock)
        expect("registrar --csi-address", flag(reg, "csi-address"), mount_path(reg, "socket-dir")["mountPath"] + "/csi.sock")
        expect("node plugin --mode", flag(plugin, "mode"), "node")
        kubelet = mount_path(plugin, "kubelet-dir")
        expect("kubelet-dir propagation", kubelet and kubelet.get("mountPropagation"), "Bidirectional")
        expect("node plugin --kubelet-dir", flag(plugin, "kubelet-dir"), kubelet and kubelet["mountPath"])
        expect("kubelet-dir hostPath", vols["kubelet-dir"]["hostPath"]["path"], kubelet and kubelet["mountPath"])
        expect("node plugin privileged", plugin.get("securityContext", {}).get("privileged"), True)
        expect("/dev/fuse", vols.get("fuse", {}).get("hostPath", {}).get("path"), "/dev/fuse")
        # The mounter: its socket where the plugin looks for it, FUSE, and the kubelet's
        # folder shared both ways (its mounts must reach the host and the pods).
        mds = one(docs, "DaemonSet", "meridian-csi-mounter")
        mspec = mds["spec"]["template"]["spec"] if mds else None
        mounter = mspec and {c["name"]: c for c in mspec["containers"]}.get("meridian-mounter")
        if mounter is None:
            bad.append("no DaemonSet meridian-csi-mounter with a meridian-mounter container")
        else:
            mvols = {v["name"]: v for v in mspec["volumes"]}
            expect("mounter-dir on the host", mvols["mounter-dir"].get("hostPath", {}).get("path"),
                   vols["mounter-dir"].get("hostPath", {}).get("path"))
            expect("mounter update strategy", mds["spec"].get("updateStrategy", {}).get("type"), "OnDelete")
            expect("mounter /dev/fuse volume", mvols.get("fuse", {}).get("hostPath", {}).get("path"), "/dev/fuse")
            expect("mounter kubelet-dir hostPath", mvols["kubelet-dir"]["hostPath"]["path"], "/var/lib/kubelet")
            msock = mount_path(mounter, "mounter-dir")["mountPath"] + "/mounter.sock"
            expect("mounter --endpoint", flag(mounter, "endpoint"), "unix://" + msock)
            expect("node plugin --mounter", flag(plugin, "mounter"), "unix://" + mount_path(plugin, "mounter-dir")["mountPath"] + "/mounter.sock")
            expect("mounter-dir shared", mount_path(plugin, "mounter-dir")["mountPath"], mount_path(mounter, "mounter-dir")["mountPath"])
            mk = mount_path(mounter, "kubelet-dir")
            expect("mounter kubelet-dir propagation", mk and mk.get("mountPropagation"), "Bidirectional")
            expect("mounter --kubelet-dir", flag(mounter, "kubelet-dir"), mk and mk["mountPath"])
            expect("mounter privileged", mounter.get("securityContext", {}).get("privileged"), True)
            expect("mounter /dev/fuse", mount_path(mounter, "fuse") and mount_path(mounter, "fuse")["mountPath"], "/dev/fuse")
        expect("registration-dir", vols["registration-dir"]["hostPath"]["path"], "/var/lib/kubelet/plugins_registry")
        expect("registrar registration mount", mount_path(reg, "registration-dir")["mountPath"], "/registration")

    # The controller: every sidecar speaks to the plugin's socket.
    ctl = one(docs, "Deployment", "meridian-csi-controller")
    if ctl is None:
        bad.append("no Deployment meridian-csi-controller")
    else:
        spec = ctl["spec"]["template"]["spec"]
        cs = {c["name"]: c for c in spec["containers"]}
        plugin = cs["meridian-csi"]
        expect("controller plugin --mode", flag(plugin, "mode"), "controller")
        endpoint = flag(plugin, "endpoint") or ""
        sock_dir = mount_path(plugin, "socket-dir")["mountPath"]
        expect("controller plugin --endpoint", endpoint, f"unix://{sock_dir}/csi.sock")
        for name in ("csi-provisioner", "csi-resizer", "csi-snapshotter"):
            c = cs.get(name)
            if c is None:
                bad.append(f"no {name} sidecar")
                continue
            expect(f"{name} --csi-address", flag(c, "csi-address"), mount_path(c, "socket-dir")["mountPath"] + "/csi.sock")
            expect(f"{name} socket mount", mount_path(c, "socket-dir")["mountPath"], sock_dir)

    # Metaserver addresses given to the plugins and chunkservers name the StatefulSet's pods.
    meta = one(docs, "StatefulSet", "meta")
    if meta is None:
        bad.append("no StatefulSet meta")
    else:
        ns = meta["metadata"]["namespace"]
        port = meta["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        want = ",".join(f"meta-{i}.{meta['spec']['serviceName']}.{ns}.svc:{port}" for i in range(meta["spec"]["replicas"]))
        for name, d in (("node plugin", node), ("controller plugin", ctl)):
            if d:
                c = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "meridian-csi"][0]
                expect(f"{name} --meta", flag(c, "meta"), want)
        chunk = one(docs, "StatefulSet", "chunk")
        if chunk:
            env = {e["name"]: e.get("value") for e in chunk["spec"]["template"]["spec"]["containers"][0]["env"]}
            expect("chunkserver META", env.get("META"), want)

    for b in bad:
        print("disagreement:", b)
    print(f"{len(docs)} objects checked, {len(bad)} disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
