//! Reading buffers back to the host, natively and in the browser.

use super::Gpu;
use crate::error::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A single-value channel whose receiver is a future: `map_async` delivers through a callback, which
/// natively fires inside `Device::poll` and in the browser from the event loop.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

pub(crate) struct Receiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Receiver<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.lock().unwrap();
        match slot.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

pub(crate) fn channel<T>() -> (impl FnOnce(T), Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    let tx = slot.clone();
    let send = move |v: T| {
        let mut s = tx.lock().unwrap();
        s.value = Some(v);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    };
    (send, Receiver(slot))
}

/// Copies `bytes` bytes at `offset` of `buffer` to the host.
pub async fn read_buffer(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Result<Vec<u8>> {
    let size = bytes.next_multiple_of(4).max(4);
    let staging = gpu.readback_buffer("readback", size);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    gpu.queue.submit([enc.finish()]);
    map_read(gpu, &staging, bytes, None).await
}

/// Maps a read-back buffer (MAP_READ) after the work writing it was submitted (`submission`, or
/// everything submitted), copies its first `bytes` bytes out and unmaps it, so that the same
/// buffer serves every step.
pub(crate) async fn map_read(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    bytes: u64,
    submission: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    let (send, recv) = channel();
    buffer.slice(..).map_async(wgpu::MapMode::Read, send);
    match submission {
        // Only the submission that wrote the buffer: later ones keep the GPU busy meanwhile.
        Some(index) => gpu.wait_for(index)?,
        None => gpu.wait()?,
    }
    // A map fails when the device is gone: say that, not just that the map failed.
    let failed = |e: String| gpu.lost_error().unwrap_or(Error::Readback(e));
    recv.await.map_err(|e| failed(e.to_string()))?;
    let data = {
        let view = buffer
            .slice(..)
            .get_mapped_range()
            .map_err(|e| failed(e.to_string()))?;
        view[..bytes as usize].to_vec()
    };
    buffer.unmap();
    gpu.take_error("read-back")?;
    Ok(data)
}
