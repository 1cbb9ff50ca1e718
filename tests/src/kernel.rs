//! What the kernel holds of the gateway's data plane: the XDP program on each
//! interface and the objects pinned in the lab's bpffs.

use std::{collections::BTreeMap, fs, process::Command};

use aya::{
    maps::MapInfo,
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
    },
};
use keystone_common::names;

use crate::{
    Lab, cmd,
    error::{LabError, Result, io_err},
};

/// The gateway's data plane as the kernel shows it; equal views mean nothing was
/// replaced (ids are never reused while an object lives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaneView {
    /// Gateway interface → the id of the XDP program it runs, if any.
    pub xdp: BTreeMap<String, Option<u32>>,
    /// The agent's pins: name → the pinned object's id (map, program or link; for a
    /// link also the id of the program it runs).
    pub pins: BTreeMap<String, (u32, Option<u32>)>,
}

impl PlaneView {
    /// No XDP program on any gateway interface, nothing pinned.
    pub fn is_empty(&self) -> bool {
        self.xdp.values().all(Option::is_none) && self.pins.is_empty()
    }
}

impl Lab {
    /// The XDP program id each gateway interface runs (`ip -d -j link show`).
    pub fn xdp_programs(&self) -> Result<BTreeMap<String, Option<u32>>> {
        self.gateway_interfaces()
            .into_iter()
            .map(|iface| {
                let out = cmd::run(Command::new("ip").args([
                    "-n",
                    self.gateway_ns(),
                    "-d",
                    "-j",
                    "link",
                    "show",
                    "dev",
                    &iface,
                ]))?;
                let json: serde_json::Value =
                    serde_json::from_str(&out).map_err(|source| LabError::Parse {
                        what: format!("ip -j link show dev {iface}"),
                        output: out.clone(),
                        source,
                    })?;
                let xdp = &json[0]["xdp"];
                let id = xdp["prog"]["id"]
                    .as_u64()
                    .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
                    .map(|id| id as u32);
                Ok((iface, id))
            })
            .collect()
    }

    /// [`PlaneView`] of the gateway and the lab's pin directory.
    pub fn plane_view(&self) -> Result<PlaneView> {
        let dir = self.pin_dir();
        let mut pins = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A bpffs also shows the kernel's own iterators (maps.debug, progs.debug).
            let program = name == names::PROGRAM || name == names::TC_PROGRAM;
            let link = name.starts_with("link_") || name.starts_with("tc_link_");
            if !(name.starts_with("KS_") || program || link) {
                continue;
            }
            let path = entry.path();
            let what = |e: &dyn std::fmt::Display| LabError::Io {
                what: format!("reading the pinned {}", path.display()),
                source: std::io::Error::other(e.to_string()),
            };
            let ids = if link {
                let link: FdLink = PinnedLink::from_pin(&path).map_err(|e| what(&e))?.into();
                let info = link.info().map_err(|e| what(&e))?;
                (info.id(), Some(info.program_id()))
            } else if program {
                (
                    ProgramInfo::from_pin(&path).map_err(|e| what(&e))?.id(),
                    None,
                )
            } else {
                (MapInfo::from_pin(&path).map_err(|e| what(&e))?.id(), None)
            };
            pins.insert(name, ids);
        }
        Ok(PlaneView {
            xdp: self.xdp_programs()?,
            pins,
        })
    }
}
