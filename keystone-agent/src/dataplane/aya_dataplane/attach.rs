//! Attaching the program to interfaces (or swapping it into a pinned link) and
//! the per-interface flags.

use std::path::Path;

use aya::{
    Ebpf,
    maps::Array,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use keystone_common::{limits::iface::MAX_IFINDEX, names};

use super::{AttachMode, Attachment, maps::map_err};
use crate::dataplane::{LoadError, interfaces, start::Start};

pub(super) fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let program = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(LoadError::MissingProgram {
            name: names::PROGRAM,
        })?;
    program.try_into().map_err(|source| LoadError::Program {
        what: "find",
        source,
    })
}

/// Attaches `program` to `interface` and pins the link as `link_<interface>`, or
/// swaps the program into the link a previous agent pinned there.
pub(super) fn attach(
    program: &mut Xdp,
    interface: &str,
    pin_dir: &Path,
    mode: AttachMode,
    start: &mut Start,
) -> Result<Attachment, LoadError> {
    let pin = pin_dir.join(format!("link_{interface}"));
    let attach_err = |source| LoadError::Attach {
        interface: interface.to_owned(),
        source,
    };
    let link_err = |source| LoadError::Link {
        path: pin.clone(),
        source,
    };
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(link_err)?;
        let old: XdpLink = FdLink::from(pinned).try_into().map_err(link_err)?;
        let id = program.attach_to_link(old).map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        let link: FdLink = link.try_into().map_err(link_err)?;
        start.swapped_link(pin.clone());
        tracing::info!(
            interface,
            "replaced the program in the XDP link pinned by a previous run"
        );
        return Ok(Attachment {
            interface: interface.to_owned(),
            pin,
            link,
            flags: None,
        });
    }
    let (id, native) = match mode {
        AttachMode::Driver => match program.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, true),
            Err(error) => {
                tracing::warn!(interface, %error, "native XDP attach failed; falling back to generic (skb) mode");
                let id = program
                    .attach(interface, XdpMode::Skb)
                    .map_err(attach_err)?;
                (id, false)
            }
        },
        AttachMode::Generic => (
            program
                .attach(interface, XdpMode::Skb)
                .map_err(attach_err)?,
            false,
        ),
    };
    let link = program.take_link(id).map_err(attach_err)?;
    let link: FdLink = link.try_into().map_err(link_err)?;
    let pinned = link.pin(&pin).map_err(|source| LoadError::Pin {
        path: pin.clone(),
        source,
    })?;
    start.created(pin.clone());
    Ok(Attachment {
        interface: interface.to_owned(),
        pin,
        link: pinned.into(),
        flags: Some(interfaces::flags(native)),
    })
}

pub(super) fn set_iface_flags(ebpf: &mut Ebpf, ifindex: u32, flags: u32) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut(names::IFACES)
        .ok_or(LoadError::MissingMap { map: names::IFACES })?;
    Array::<_, u32>::try_from(map)
        .and_then(|mut a| a.set(ifindex, flags, 0))
        .map_err(map_err(names::IFACES))?;
    Ok(())
}

/// Writes each attachment's `iface_flags` to `names::IFACES` and returns them. A
/// link swapped over from a previous agent keeps the flags that agent wrote (the
/// map is pinned), or gets `interfaces::guessed_flags` if it wrote none.
pub(super) fn write_iface_flags(
    ebpf: &mut Ebpf,
    attachments: &[Attachment],
) -> Result<Vec<(String, u32)>, LoadError> {
    let mut written = Vec::new();
    for a in attachments {
        let name = a.interface.as_str();
        let Some(ifindex) = interfaces::ifindex(name).filter(|i| *i < MAX_IFINDEX) else {
            tracing::warn!(
                interface = name,
                "ifindex unknown or not below {MAX_IFINDEX}: packets are never redirected into this interface, the kernel forwards them"
            );
            continue;
        };
        let pinned = || -> Option<u32> {
            let map = ebpf.map(names::IFACES)?;
            let value = Array::<_, u32>::try_from(map).ok()?.get(&ifindex, 0).ok()?;
            (value != 0).then_some(value)
        };
        let flags = a
            .flags
            .or_else(pinned)
            .unwrap_or_else(|| interfaces::guessed_flags(name));
        set_iface_flags(ebpf, ifindex, flags)?;
        written.push((a.interface.clone(), flags));
    }
    Ok(written)
}
