//! A device lost in the middle of generation: the next call returns a typed error (no panic, no
//! hang, no tokens computed on a dead device), and a new engine on a new device works.

mod common;

use common::greedy;

use diffattn::Error;
use diffattn::generate::TextModel;
use diffattn::model::EngineOptions;
use diffattn::model::random::RandomModel;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

fn load(gpu: Arc<diffattn::Gpu>, m: &RandomModel) -> TextModel {
    TextModel::from_source(gpu, m.source(), EngineOptions::default(), &mut |_, _| {}).unwrap()
}

fn ids(model: &mut TextModel, prompt: &str, n: usize) -> Vec<u32> {
    model
        .generate(prompt, greedy(n))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect()
}

/// What the generation loop yields after the device is destroyed: the pieces it still produced
/// (from steps already read back) and the first error.
type AfterLoss = (usize, Option<Error>);

#[test]
fn a_device_lost_mid_generation_is_an_error_and_a_new_device_works() {
    let m = RandomModel::tiny("diff_v2", 3);
    let want = ids(&mut load(Arc::new(common::gpu()), &m), "Hello", 24);
    assert_eq!(want.len(), 24);

    // The lost device runs on its own thread, so that a hang fails the test instead of stalling it.
    let (tx, rx) = mpsc::channel::<(Vec<u32>, AfterLoss)>();
    std::thread::spawn(move || {
        let gpu = Arc::new(common::gpu());
        let mut model = load(gpu.clone(), &m);
        let mut generation = model.generate("Hello", greedy(200)).unwrap();
        let mut before = Vec::new();
        for _ in 0..4 {
            before.push(generation.next_blocking().unwrap().unwrap().id);
        }
        gpu.device.destroy();
        let mut after = 0;
        let mut error = None;
        while let Some(piece) = generation.next_blocking() {
            match piece {
                Ok(_) => after += 1,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        drop(generation);
        // A later call on the same engine fails the same way instead of hanging or panicking.
        let again = model
            .generate("Hi", greedy(4))
            .and_then(|mut g| match g.next_blocking() {
                Some(r) => r.map(|_| ()),
                None => Ok(()),
            });
        assert!(again.is_err(), "a call on the lost device succeeded");
        tx.send((before, (after, error))).unwrap();
    });
    let (before, (after, error)) = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("generation on a lost device hung (or its thread panicked)");
    assert_eq!(before, want[..4], "tokens before the loss");
    let error = error.expect("generation ran to its end on a destroyed device");
    eprintln!("after the loss: {after} piece(s) already in flight, then: {error}");
    assert!(
        matches!(error, Error::DeviceLost(_)),
        "expected Error::DeviceLost, got {error:?}"
    );
    // Steps already read back may still come out, but never more than one submission's worth.
    assert!(after <= 64, "{after} pieces after the loss");

    let mut fresh = load(Arc::new(common::gpu()), &RandomModel::tiny("diff_v2", 3));
    assert_eq!(
        ids(&mut fresh, "Hello", 24),
        want,
        "a new engine on a new device"
    );
}
