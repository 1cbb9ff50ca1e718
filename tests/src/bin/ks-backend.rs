//! ks-backend: a lab backend. Answers HTTP/1.1 on TCP `[::]:<port>` (dual-stack,
//! keep-alive) with `200 OK` and body `<name>\n` (`POST /echo`: the request's body,
//! byte for byte, with the name in `X-Backend`), and every UDP datagram on the same
//! port with `<name>`, replying from the address the datagram was sent to (so it
//! works behind DSR, where that address is the VIP held on `lo`).

use std::{
    io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read as _, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrLike, recvmsg,
    sendmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Parser)]
#[command(about = "Keystone lab backend: HTTP and UDP answers carrying its name")]
struct Args {
    /// Name put in every answer.
    #[arg(long)]
    name: String,
    /// TCP and UDP port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Close idle keep-alive connections after this many seconds.
    #[arg(long, default_value_t = 300)]
    idle_secs: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let name: Arc<str> = Arc::from(args.name.as_str());

    let tcp = socket(Domain::IPV6, Type::STREAM, Protocol::TCP, false)?;
    tcp.bind(&SockAddr::from(SocketAddr::from((
        Ipv6Addr::UNSPECIFIED,
        args.port,
    ))))
    .with_context(|| format!("binding TCP [::]:{}", args.port))?;
    tcp.listen(256)?;
    let tcp: TcpListener = tcp.into();

    // Two UDP sockets, so each can ask for its own family's packet info.
    let udp4 = socket(Domain::IPV4, Type::DGRAM, Protocol::UDP, false)?;
    udp4.bind(&SockAddr::from(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        args.port,
    ))))
    .with_context(|| format!("binding UDP 0.0.0.0:{}", args.port))?;
    setsockopt(&udp4, sockopt::Ipv4PacketInfo, &true).context("IP_PKTINFO")?;
    let udp6 = socket(Domain::IPV6, Type::DGRAM, Protocol::UDP, true)?;
    udp6.bind(&SockAddr::from(SocketAddr::from((
        Ipv6Addr::UNSPECIFIED,
        args.port,
    ))))
    .with_context(|| format!("binding UDP [::]:{}", args.port))?;
    setsockopt(&udp6, sockopt::Ipv6RecvPacketInfo, &true).context("IPV6_RECVPKTINFO")?;

    let (n4, n6) = (name.clone(), name.clone());
    let udp4: UdpSocket = udp4.into();
    let udp6: UdpSocket = udp6.into();
    thread::spawn(move || udp_loop::<SockaddrIn>(&udp4, &n4, "udp4"));
    thread::spawn(move || udp_loop::<SockaddrIn6>(&udp6, &n6, "udp6"));

    println!(
        "ks-backend {name} listening on [::]:{port} (tcp, dual-stack) and udp 0.0.0.0:{port}, [::]:{port}",
        port = args.port
    );
    io::stdout().flush()?;

    let idle = Duration::from_secs(args.idle_secs);
    for conn in tcp.incoming() {
        match conn {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || {
                    if let Err(e) = serve_http(stream, &name, idle) {
                        eprintln!("connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

fn socket(domain: Domain, ty: Type, proto: Protocol, v6only: bool) -> Result<Socket> {
    let s = Socket::new(domain, ty, Some(proto)).context("socket")?;
    s.set_reuse_address(true)?;
    if domain == Domain::IPV6 {
        s.set_only_v6(v6only)?;
    }
    Ok(s)
}

/// Serves HTTP/1.x requests on one connection until the peer closes or asks to.
fn serve_http(stream: TcpStream, name: &str, idle: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(idle))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let body = format!("{name}\n");
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = request_line.trim_end().ends_with("HTTP/1.0");
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        let echo = request_line.split(' ').nth(1) == Some("/echo");
        let mut request_body = (&mut reader).take(content_length as u64);
        let mut received = Vec::new();
        if echo {
            request_body.read_to_end(&mut received)?;
            if received.len() != content_length {
                return Ok(()); // the peer closed inside the body
            }
        } else {
            io::copy(&mut request_body, &mut io::sink())?;
        }
        let answer: &[u8] = if echo { &received } else { body.as_bytes() };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: {}\r\n\r\n",
            if echo {
                "application/octet-stream"
            } else {
                "text/plain"
            },
            answer.len(),
            if close { "close" } else { "keep-alive" }
        )?;
        writer.write_all(answer)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Answers every datagram with `name`, from the address it was sent to (the
/// packet-info control message), so a reply to a VIP comes from the VIP.
fn udp_loop<A: SockaddrLike + std::fmt::Display>(sock: &UdpSocket, name: &str, family: &str) {
    let fd = sock.as_raw_fd();
    let mut buf = [0u8; 2048];
    loop {
        // Room for the larger of the two families' packet info.
        let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (from, reply_info) =
            match recvmsg::<A>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty()) {
                Ok(msg) => {
                    let info = msg.cmsgs().ok().and_then(|mut c| c.find_map(reply_from));
                    (msg.address, info)
                }
                Err(e) => {
                    eprintln!("{family} recv: {e}");
                    continue;
                }
            };
        let Some(from) = from else { continue };
        let cmsgs: Vec<ControlMessage> = reply_info.iter().map(PktInfo::control).collect();
        if let Err(e) = sendmsg(
            fd,
            &[IoSlice::new(name.as_bytes())],
            &cmsgs,
            MsgFlags::empty(),
            Some(&from),
        ) {
            eprintln!("{family} send to {from}: {e}");
        }
    }
}

/// The packet info a reply is sent with: its source is the received datagram's
/// destination.
enum PktInfo {
    V4(nix::libc::in_pktinfo),
    V6(nix::libc::in6_pktinfo),
}

impl PktInfo {
    fn control(&self) -> ControlMessage<'_> {
        match self {
            PktInfo::V4(info) => ControlMessage::Ipv4PacketInfo(info),
            PktInfo::V6(info) => ControlMessage::Ipv6PacketInfo(info),
        }
    }
}

fn reply_from(received: ControlMessageOwned) -> Option<PktInfo> {
    match received {
        ControlMessageOwned::Ipv4PacketInfo(pi) => Some(PktInfo::V4(nix::libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: pi.ipi_addr,
            ipi_addr: nix::libc::in_addr { s_addr: 0 },
        })),
        ControlMessageOwned::Ipv6PacketInfo(pi) => Some(PktInfo::V6(nix::libc::in6_pktinfo {
            ipi6_addr: pi.ipi6_addr,
            ipi6_ifindex: 0,
        })),
        _ => None,
    }
}
