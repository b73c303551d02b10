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
    if let Err(e) = recv.await {
        #[cfg(target_arch = "wasm32")]
        await_lost(gpu).await;
        return Err(failed(e.to_string()));
    }
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

/// In the browser a destroyed device fails the pending maps before its `lost` promise settles
/// (which is what sets [`Gpu::lost_error`]): give that promise a few turns of the event loop, at
/// most 200 ms and only on this failure path, so that the error names the lost device.
#[cfg(target_arch = "wasm32")]
async fn await_lost(gpu: &Gpu) {
    for _ in 0..20 {
        if gpu.lost_error().is_some() {
            return;
        }
        let timer = js_sys::Promise::new(&mut |resolve, _| {
            let global = js_sys::global();
            let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
                .ok()
                .and_then(|f| wasm_bindgen::JsCast::dyn_into::<js_sys::Function>(f).ok());
            match set_timeout {
                Some(f) => {
                    let _ = f.call2(&global, &resolve, &10.into());
                }
                // No timer (not a browser global): resolve at once rather than never.
                None => {
                    let _ = resolve.call0(&global);
                }
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(timer).await;
    }
}
