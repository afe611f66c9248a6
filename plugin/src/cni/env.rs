//! The CNI_* environment a runtime passes, validated before any of it touches a path or netlink.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::InvalidEnv(format!(
                    "CNI_COMMAND {other:?} is not a CNI verb (ADD, DEL, CHECK, VERSION, STATUS, GC)"
                )))
            }
        })
    }
}

/// The container an ADD/DEL/CHECK is about.
#[derive(Debug, Clone)]
pub struct Container {
    pub container_id: String,
    /// Empty when the runtime passes none (DEL only: containerd's ctr, a netns that is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: PodArgs,
}

/// The pod identity from CNI_ARGS (Multus/kubelet), if any.
#[derive(Debug, Clone, Default)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `IP=` (comma-separated): the conventional CNI_ARGS request, sent by podman's `--ip`.
    pub ips: Vec<String>,
    /// `MAC=`: sent by podman's `--mac-address`.
    pub mac: Option<String>,
    /// `K8S_POD_UID`: which pod object this sandbox belongs to (a pod recreated under the same name
    /// has a new UID).
    pub uid: Option<String>,
}

impl Container {
    /// Who the pool and the derived MAC know this attachment as: "namespace/name" when the runtime
    /// names the pod, else the container ID. Never the interface name: the order of a pod's
    /// networks sets it (`networks: "cameras, iot"` makes iot's attachment `net2`). The pool keys a
    /// second attachment of the same network in the same pod apart by itself
    /// ([`iotlan_ipam::allocator`]).
    pub fn identity(&self) -> String {
        match (&self.args.namespace, &self.args.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => self.container_id.clone(),
        }
    }
}

/// Everything read from the environment for one invocation.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container: Option<Container>,
    /// Directories searched for delegated IPAM plugins.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Result<Env> {
        Env::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let command = Command::parse(
            &get("CNI_COMMAND")
                .ok_or_else(|| Error::InvalidEnv("CNI_COMMAND is not set".into()))?,
        )?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let container = match command {
            Command::Add | Command::Del | Command::Check => Some(read_container(command, &get)?),
            Command::Version | Command::Status | Command::Gc => None,
        };
        Ok(Env {
            command,
            container,
            path,
        })
    }
}

fn read_container(command: Command, get: &impl Fn(&str) -> Option<String>) -> Result<Container> {
    let container_id = get("CNI_CONTAINERID")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidEnv("CNI_CONTAINERID is not set".into()))?;
    validate_container_id(&container_id)?;
    let ifname = get("CNI_IFNAME")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidEnv("CNI_IFNAME is not set".into()))?;
    validate_ifname(&ifname)?;
    let netns = get("CNI_NETNS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if netns.is_none() && command != Command::Del {
        return Err(Error::InvalidEnv(format!(
            "CNI_NETNS is not set: {command:?} needs the container's network namespace path"
        )));
    }
    let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
    Ok(Container {
        container_id,
        netns,
        ifname,
        args,
    })
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as the spec requires: it ends up in file names.
pub fn validate_container_id(id: &str) -> Result<()> {
    iotlan_ipam::names::validate_container_id(id)
        .map_err(|e| Error::InvalidEnv(format!("CNI_CONTAINERID: {e}")))
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<()> {
    iotlan_ipam::names::validate_ifname(name)
        .map_err(|e| Error::InvalidEnv(format!("CNI_IFNAME: {e}")))
}

/// `K=V;K=V` pairs. Keys iotlan does not use are ignored (Multus always sends `IgnoreUnknown=true`).
pub fn parse_cni_args(s: &str) -> Result<PodArgs> {
    let mut args = PodArgs::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::InvalidEnv(format!(
                "CNI_ARGS entry {pair:?} is not of the form KEY=VALUE"
            ))
        })?;
        match k {
            "K8S_POD_NAMESPACE" if !v.is_empty() => args.namespace = Some(v.to_string()),
            "K8S_POD_NAME" if !v.is_empty() => args.name = Some(v.to_string()),
            "IP" if !v.is_empty() => args.ips = v.split(',').map(str::to_string).collect(),
            "MAC" if !v.is_empty() => args.mac = Some(v.to_string()),
            "K8S_POD_UID" if !v.is_empty() => args.uid = Some(v.to_string()),
            _ => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_multus_style_env() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=true;K8S_POD_NAMESPACE=home-assistant;K8S_POD_NAME=home-assistant-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u",
            ),
        ])
        .unwrap();
        let a = e.container.unwrap();
        assert_eq!(a.identity(), "home-assistant/home-assistant-0");
        let podman =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;MAC=02:11:22:33:44:66;IP=10.0.0.5")
                .unwrap();
        assert_eq!(podman.ips, vec!["10.0.0.5".to_string()]);
        assert_eq!(podman.mac.as_deref(), Some("02:11:22:33:44:66"));
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn identity_falls_back_to_container_id() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth1"),
        ])
        .unwrap();
        let a = e.container.unwrap();
        assert!(a.netns.is_none(), "DEL accepts an empty CNI_NETNS");
        assert_eq!(a.identity(), "abc");
    }

    #[test]
    fn rejects_bad_input_with_code_4() {
        for bad in [
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "../etc"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "net1"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "a-very-long-ifname"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "net:1"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_IFNAME", "net1"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "net1"),
                ("CNI_ARGS", "novalue"),
            ],
            vec![("CNI_COMMAND", "FROB")],
        ] {
            let err = env(&bad).unwrap_err();
            assert_eq!(err.code(), 4, "{bad:?}: {err}");
        }
    }
}
