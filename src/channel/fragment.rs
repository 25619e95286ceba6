//! Messages larger than one socket packet, cut into packets here rather than by ipc-channel.
//!
//! ipc-channel sends a message larger than the socket buffer through a side channel it creates for the purpose, and
//! holds that side channel's receiving end itself until the last fragment is written. When the receiving process dies
//! meanwhile, the sender's writes never fail: the socket still has a reader (the sender), so they block in the kernel
//! for good, and a stage that dies while a large event is in flight to it hangs its neighbour. Packets of at most
//! [`limit`] bytes go in one `sendmsg` each on the channel's own socket, whose only reader is the receiving process:
//! when it dies, the blocked send fails at once with EPIPE, whatever the message's size.
//!
//! A message that does not fit is sent as packets that each start with [`FRAGMENT`] and a byte saying whether more
//! follow. No message of ours starts with that byte (batches start with their tag, bincode values with a variant or
//! a varint, and 0xff is neither); one that did would be cut into packets too, so nothing is ever misread.

use ipc_channel::ipc::IpcBytesSender;
use ipc_channel::platform::OsIpcSender;
use std::sync::OnceLock;

/// The first byte of a packet that carries part of a message.
const FRAGMENT: u8 = 0xff;
const MORE: u8 = 1;
const LAST: u8 = 0;
/// Packets stay well under the socket buffer, so that a kernel short of memory (ENOBUFS) does not make ipc-channel
/// fragment them after all.
const MAX_PACKET: usize = 128 * 1024;

/// The largest message sent as it is, in one packet.
pub fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| OsIpcSender::get_max_fragment_size().min(MAX_PACKET) - 2)
}

/// Sends `message`, in one packet or in several, blocking while the receiver is full.
pub fn send(tx: &IpcBytesSender, message: &[u8]) -> std::io::Result<()> {
    let limit = limit();
    if message.len() <= limit && message.first() != Some(&FRAGMENT) {
        return tx.send(message);
    }
    let mut packet = Vec::with_capacity(limit + 2);
    let mut pieces = message.chunks(limit).peekable();
    while let Some(piece) = pieces.next() {
        packet.clear();
        packet.extend_from_slice(&[FRAGMENT, if pieces.peek().is_some() { MORE } else { LAST }]);
        packet.extend_from_slice(piece);
        tx.send(&packet)?;
    }
    Ok(())
}

/// Puts messages back together from the packets received.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: Vec<u8>,
}

impl Reassembly {
    /// Takes the next packet received: the whole message once it is complete.
    pub fn take(&mut self, packet: Vec<u8>) -> Option<Vec<u8>> {
        match packet.as_slice() {
            [FRAGMENT, more, piece @ ..] => {
                self.partial.extend_from_slice(piece);
                (*more == LAST).then(|| std::mem::take(&mut self.partial))
            }
            _ => Some(packet),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_channel::ipc;
    use std::time::{Duration, Instant};

    fn receive(rx: &ipc::IpcBytesReceiver) -> Vec<u8> {
        let mut whole = Reassembly::default();
        loop {
            if let Some(message) = whole.take(rx.recv().unwrap()) {
                return message;
            }
        }
    }

    #[test]
    fn messages_of_any_size_arrive_whole_and_in_order() {
        let (tx, rx) = ipc::bytes_channel().unwrap();
        let sizes = [0, 1, limit(), limit() + 1, 3 * limit() + 7];
        let sender = std::thread::spawn(move || {
            for (i, n) in sizes.into_iter().enumerate() {
                let message: Vec<u8> = (0..n).map(|b| (b + i) as u8).collect();
                send(&tx, &message).unwrap();
            }
            // A message that happens to start like a packet of a larger one.
            send(&tx, &[FRAGMENT, LAST, 9]).unwrap();
        });
        for (i, n) in sizes.into_iter().enumerate() {
            let got = receive(&rx);
            assert_eq!(got.len(), n);
            assert!(got.iter().enumerate().all(|(b, &v)| v == (b + i) as u8), "message {i} intact");
        }
        assert_eq!(receive(&rx), [FRAGMENT, LAST, 9]);
        sender.join().unwrap();
    }

    #[test]
    fn a_sender_blocked_on_a_large_message_sees_its_receiver_go() {
        let (tx, rx) = ipc::bytes_channel().unwrap();
        let started = Instant::now();
        let sender = std::thread::spawn(move || send(&tx, &vec![7u8; 4 << 20]));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!sender.is_finished(), "4 MiB cannot fit in the socket buffer");
        drop(rx);
        let sent = sender.join().unwrap();
        assert!(sent.is_err(), "the send fails instead of blocking for good");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
