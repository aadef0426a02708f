//! A buffered gdb connection. gdbstub's own `TcpStream` connection makes a
//! system call per byte both ways (and, with `TCP_NODELAY`, a TCP segment per
//! byte written): a register dump cost ~180 µs that way. This one writes a
//! packet with one call at gdbstub's flush, and reads what the socket has.

use std::io::{Read, Write};
use std::net::TcpStream;

use gdbstub::conn::{Connection, ConnectionExt};

/// A TCP connection to gdb with read and write buffers.
pub struct GdbConn {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Next unread byte of `input`.
    pos: usize,
}

impl GdbConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        GdbConn {
            stream,
            out: Vec::new(),
            input: Vec::new(),
            pos: 0,
        }
    }

    /// The socket (for the thread that watches it while the guest runs).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Whether bytes gdb sent are read from the socket but not yet handed
    /// to gdbstub (the socket watcher cannot see those).
    pub fn has_buffered_input(&self) -> bool {
        self.pos < self.input.len()
    }

    /// Reads what the socket has into the input buffer (blocking when
    /// `block`); whether anything came.
    fn fill(&mut self, block: bool) -> std::io::Result<bool> {
        self.stream.set_nonblocking(!block)?;
        let mut chunk = [0u8; 4096];
        let result = Read::read(&mut self.stream, &mut chunk);
        if !block {
            self.stream.set_nonblocking(false)?;
        }
        match result {
            Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.input.drain(..self.pos);
                self.pos = 0;
                self.input.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if !block && e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Connection for GdbConn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        // An acknowledgement outside a packet goes out at once: gdbstub does
        // not flush the one it sends before running the guest, and gdb waits
        // for it.
        if byte == b'+' && self.out.len() == 1 {
            self.flush()?;
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        if !self.out.is_empty() {
            Write::write_all(&mut self.stream, &self.out)?;
            self.out.clear();
        }
        Write::flush(&mut self.stream)
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.stream.set_nodelay(true)
    }
}

impl ConnectionExt for GdbConn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if !self.has_buffered_input() {
            self.fill(true)?;
        }
        let byte = self
            .input
            .get(self.pos)
            .copied()
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        self.pos += 1;
        Ok(byte)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if !self.has_buffered_input() && !self.fill(false)? {
            return Ok(None);
        }
        Ok(self.input.get(self.pos).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn packets_go_out_at_flush_and_acks_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let mut conn = GdbConn::new(server);
        conn.write(b'+').unwrap();
        let mut b = [0u8; 1];
        Read::read_exact(&mut client, &mut b).unwrap();
        assert_eq!(&b, b"+");
        conn.write(b'$').unwrap();
        conn.write_all(b"OK#9a").unwrap();
        assert!(!conn.out.is_empty());
        conn.flush().unwrap();
        let mut p = [0u8; 6];
        Read::read_exact(&mut client, &mut p).unwrap();
        assert_eq!(&p, b"$OK#9a");
        Write::write_all(&mut client, b"$g#67").unwrap();
        let got: Vec<u8> = (0..5).map(|_| conn.read().unwrap()).collect();
        assert_eq!(got, b"$g#67");
        assert_eq!(conn.peek().unwrap(), None);
        drop(client);
        assert!(conn.read().is_err());
    }
}
