//! `h1-floor LISTEN UPSTREAM`: forwards HTTP/1.1 requests with Content-Length bodies (or none)
//! from LISTEN to UPSTREAM over one keep-alive upstream connection per client connection,
//! adding X-Forwarded-For and -Proto. Anything else (chunked bodies, upgrades, errors) ends the
//! connection. A benchmark reference only: see Cargo.toml.
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: h1-floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR is host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR is host:port");
    let l = TcpListener::bind(listen).await.expect("bind LISTEN_ADDR");
    println!("h1-floor listening on {}", l.local_addr().expect("local address"));
    loop {
        let Ok((c, peer)) = l.accept().await else { continue };
        let _ = c.set_nodelay(true);
        tokio::spawn(async move {
            let _ = conn(c, peer, upstream).await;
        });
    }
}

fn content_length(headers: &[httparse::Header]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

async fn conn(mut c: TcpStream, peer: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let mut u: Option<TcpStream> = None;
    let mut cbuf = BytesMut::with_capacity(4096);
    let mut ubuf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let ip = peer.ip().to_string();
    loop {
        // request head
        let (head_len, body_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let httparse::Status::Complete(n) = req.parse(&cbuf).map_err(|_| std::io::ErrorKind::InvalidData)? {
                out.clear();
                out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
                out.push(b' ');
                out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("x-forwarded-for") {
                        continue;
                    }
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"x-forwarded-for: ");
                out.extend_from_slice(ip.as_bytes());
                out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
                break (n, content_length(req.headers));
            }
            if c.read_buf(&mut cbuf).await? == 0 {
                return Ok(());
            }
        };
        cbuf.advance(head_len);
        while cbuf.len() < body_len {
            if c.read_buf(&mut cbuf).await? == 0 {
                return Ok(());
            }
        }
        out.extend_from_slice(&cbuf[..body_len]);
        cbuf.advance(body_len);
        if u.is_none() {
            let s = TcpStream::connect(upstream).await?;
            s.set_nodelay(true)?;
            u = Some(s);
        }
        let Some(us) = u.as_mut() else { return Ok(()) };
        us.write_all(&out).await?;
        // response head
        let (head_len, body_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = resp.parse(&ubuf).map_err(|_| std::io::ErrorKind::InvalidData)? {
                break (n, content_length(resp.headers));
            }
            if us.read_buf(&mut ubuf).await? == 0 {
                return Ok(());
            }
        };
        while ubuf.len() < head_len + body_len {
            if us.read_buf(&mut ubuf).await? == 0 {
                return Ok(());
            }
        }
        c.write_all(&ubuf[..head_len + body_len]).await?;
        ubuf.advance(head_len + body_len);
    }
}
