//! The routes file BIRD includes: one static protocol per family, the announced VIPs
//! as blackhole host routes (BIRD's config exports only these protocols, to BGP).

use std::{net::IpAddr, os::unix::fs::PermissionsExt, path::Path};

use crate::store::{StoreError, write_atomically};

/// The file's text for `announced`: always valid BIRD 2 config, also when empty.
pub fn render(announced: &[IpAddr]) -> String {
    let family = |v4: bool| -> String {
        announced
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| format!(" route {a}/{} blackhole;", if v4 { 32 } else { 128 }))
            .collect()
    };
    format!(
        "# Written by keystone-agent: VIP routes announced to BGP. Do not edit.\n\
         protocol static keystone4 {{ ipv4;{} }}\n\
         protocol static keystone6 {{ ipv6;{} }}\n",
        family(true),
        family(false)
    )
}

/// The addresses a routes file written by [`render`] announces (what a previous agent
/// left for BIRD); nothing for a file that is missing or not ours.
pub fn announced_in(text: &str) -> Vec<IpAddr> {
    text.split(" route ")
        .skip(1)
        .filter_map(|r| r.split_once('/')?.0.parse().ok())
        .collect()
}

/// Replaces the file atomically (temp file and rename); readable by BIRD, which on
/// Debian runs as its own user.
pub fn write(path: &Path, text: &str) -> Result<(), StoreError> {
    write_atomically(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|source| {
        StoreError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_families_and_the_empty_file() {
        let addrs: Vec<IpAddr> = ["198.18.1.10", "2001:2::10", "198.18.1.11"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        assert_eq!(
            render(&addrs),
            "# Written by keystone-agent: VIP routes announced to BGP. Do not edit.\n\
             protocol static keystone4 { ipv4; route 198.18.1.10/32 blackhole; route 198.18.1.11/32 blackhole; }\n\
             protocol static keystone6 { ipv6; route 2001:2::10/128 blackhole; }\n"
        );
        assert_eq!(
            render(&[]),
            "# Written by keystone-agent: VIP routes announced to BGP. Do not edit.\n\
             protocol static keystone4 { ipv4; }\n\
             protocol static keystone6 { ipv6; }\n"
        );
    }

    #[test]
    fn reads_back_what_it_rendered() {
        let addrs: Vec<IpAddr> = ["198.18.1.10", "198.18.1.11", "2001:2::10"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        assert_eq!(announced_in(&render(&addrs)), addrs);
        assert!(announced_in(&render(&[])).is_empty());
        assert!(announced_in("").is_empty());
    }

    #[test]
    fn write_replaces_the_file_readable_by_bird() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keystone-routes.conf");
        write(&path, "one").expect("first write");
        write(&path, "two").expect("second write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    }
}
