//! Attaching the program to interfaces (or swapping it into a pinned link) at the
//! hook each one's `attach:` asks for, and the per-interface flags.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::Array,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use keystone_common::{limits::iface::MAX_IFINDEX, names};

use super::{AttachMode, Attachment, maps::map_err};
use crate::dataplane::{LoadError, interfaces, start::Start};

/// The hook a program runs at: the two programs of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    /// The program's name in the object, and its pin's.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Xdp => names::PROGRAM,
            Hook::Tc => names::TC_PROGRAM,
        }
    }

    /// The pin of `interface`'s link at this hook.
    pub fn link_pin(self, pin_dir: &Path, interface: &str) -> PathBuf {
        pin_dir.join(match self {
            Hook::Xdp => format!("link_{interface}"),
            Hook::Tc => format!("tc_link_{interface}"),
        })
    }

    fn other(self) -> Hook {
        match self {
            Hook::Xdp => Hook::Tc,
            Hook::Tc => Hook::Xdp,
        }
    }
}

fn find<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?;
    program.try_into().map_err(|source| LoadError::Program {
        what: "find",
        source,
    })
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    find(ebpf, names::PROGRAM)
}

pub(super) fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, LoadError> {
    find(ebpf, names::TC_PROGRAM)
}

/// Attaches the program to `interface` at the hook `mode` resolves to
/// (`interfaces::resolved`) and pins the link (`Hook::link_pin`), or swaps the
/// program into the link a previous agent pinned there. A link a previous agent
/// pinned at the other hook is unpinned (detached) once the start is committed.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    pin_dir: &Path,
    mode: AttachMode,
    start: &mut Start,
) -> Result<Attachment, LoadError> {
    let mode = interfaces::resolved(interface, mode);
    let hook = if mode == AttachMode::Tc {
        Hook::Tc
    } else {
        Hook::Xdp
    };
    let pin = hook.link_pin(pin_dir, interface);
    let stale = hook.other().link_pin(pin_dir, interface);
    if stale.exists() {
        start.unpin_on_commit(stale);
    }
    let attachment = |link, flags| Attachment {
        interface: interface.to_owned(),
        pin: pin.clone(),
        link,
        flags,
        hook,
    };
    if pin.exists() {
        let link = match hook {
            Hook::Xdp => swap_xdp(xdp_program(ebpf)?, interface, &pin),
            Hook::Tc => swap_tc(tc_program(ebpf)?, interface, &pin),
        }?;
        start.swapped_link(pin.clone(), hook);
        tracing::info!(
            interface,
            ?hook,
            "replaced the program in the link pinned by a previous run"
        );
        // A tc link's mode is known (it is the hook); an XDP link's is not.
        let flags = (hook == Hook::Tc).then_some(interfaces::flags(false));
        return Ok(attachment(link, flags));
    }
    let (link, native) = match hook {
        Hook::Xdp => attach_xdp(xdp_program(ebpf)?, interface, &pin, mode)?,
        Hook::Tc => (attach_tc(tc_program(ebpf)?, interface, &pin)?, false),
    };
    let pinned = link.pin(&pin).map_err(|source| LoadError::Pin {
        path: pin.clone(),
        source,
    })?;
    start.created(pin.clone());
    Ok(attachment(pinned.into(), Some(interfaces::flags(native))))
}

fn link_err(pin: &Path) -> impl Fn(aya::programs::links::LinkError) -> LoadError + '_ {
    |source| LoadError::Link {
        path: pin.to_owned(),
        source,
    }
}

fn attach_err(interface: &str) -> impl Fn(aya::programs::ProgramError) -> LoadError + '_ {
    |source| LoadError::Attach {
        interface: interface.to_owned(),
        source,
    }
}

fn swap_xdp(program: &mut Xdp, interface: &str, pin: &Path) -> Result<FdLink, LoadError> {
    let pinned = PinnedLink::from_pin(pin).map_err(link_err(pin))?;
    let old: XdpLink = FdLink::from(pinned).try_into().map_err(link_err(pin))?;
    let id = program.attach_to_link(old).map_err(attach_err(interface))?;
    let link = program.take_link(id).map_err(attach_err(interface))?;
    link.try_into().map_err(link_err(pin))
}

fn swap_tc(
    program: &mut SchedClassifier,
    interface: &str,
    pin: &Path,
) -> Result<FdLink, LoadError> {
    let pinned = PinnedLink::from_pin(pin).map_err(link_err(pin))?;
    let old: SchedClassifierLink = FdLink::from(pinned).try_into().map_err(link_err(pin))?;
    let id = program.attach_to_link(old).map_err(attach_err(interface))?;
    let link = program.take_link(id).map_err(attach_err(interface))?;
    link.try_into().map_err(link_err(pin))
}

/// A new XDP link in `mode` (`xdp`: native, falling back to generic with a
/// warning); returns it and whether it is native.
fn attach_xdp(
    program: &mut Xdp,
    interface: &str,
    pin: &Path,
    mode: AttachMode,
) -> Result<(FdLink, bool), LoadError> {
    let (id, native) = match mode {
        AttachMode::Generic => (
            program
                .attach(interface, XdpMode::Skb)
                .map_err(attach_err(interface))?,
            false,
        ),
        _ => match program.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, true),
            Err(error) => {
                tracing::warn!(interface, %error, "native XDP attach failed; falling back to generic (skb) mode");
                let id = program
                    .attach(interface, XdpMode::Skb)
                    .map_err(attach_err(interface))?;
                (id, false)
            }
        },
    };
    let link = program.take_link(id).map_err(attach_err(interface))?;
    Ok((link.try_into().map_err(link_err(pin))?, native))
}

/// A new tcx link at `interface`'s ingress, after whatever else runs there (a
/// bpf_link, so it can be pinned and its program swapped like an XDP link's).
fn attach_tc(
    program: &mut SchedClassifier,
    interface: &str,
    pin: &Path,
) -> Result<FdLink, LoadError> {
    let tc_err = |source| LoadError::AttachTc {
        interface: interface.to_owned(),
        source,
    };
    let id = program
        .attach_with_options(
            interface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(tc_err)?;
    let link = program.take_link(id).map_err(tc_err)?;
    link.try_into().map_err(link_err(pin))
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

/// Writes each attachment's `iface_flags` to `names::IFACES` and returns them. An
/// XDP link swapped over from a previous agent keeps the flags that agent wrote
/// (the map is pinned), or gets `interfaces::guessed_flags` if it wrote none.
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
