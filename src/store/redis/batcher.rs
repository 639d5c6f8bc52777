//! Batching: charges queued while a call is in flight go to Redis together,
//! in one call of the charge script (one round trip, one reply, one `TIME`).

use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot};

use super::charge_call::{Charge, decide};
use super::connection::Connection;
use super::scripts::Procedure;

/// The most charges one call decides: Redis runs nothing else while a
/// script runs, and a charge costs it a few microseconds.
const MOST_PER_CALL: usize = 64;

/// A queued charge and where its reply goes.
struct Queued {
    charge: Charge,
    reply: oneshot::Sender<RedisResult<Vec<i64>>>,
}

/// The queue of one store's charges, and the task that sends them: a charge
/// that finds no call in flight goes at once, alone; the charges that come
/// meanwhile go together when that call's reply is in.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts the sending task on the current tokio runtime (the one the
    /// connection lives on); it ends when the batcher is dropped.
    pub(crate) fn start(connection: Connection, charge: Procedure) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_queued(connection, charge, queued));
        Self { queue }
    }

    /// The charge script's reply for `charge`, once its call is answered.
    /// Nothing is queued until the future is first polled.
    pub(crate) async fn charge(&self, charge: Charge) -> RedisResult<Vec<i64>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { charge, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Sends the queued charges, one call at a time, until the batcher is
/// dropped.
async fn send_queued(
    mut connection: Connection,
    charge: Procedure,
    mut queued: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch = Vec::with_capacity(MOST_PER_CALL);
    while queued.recv_many(&mut batch, MOST_PER_CALL).await > 0 {
        // A charge whose caller is gone before it was sent is not sent:
        // nobody would hear whether it was spent.
        batch.retain(|queued| !queued.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let charges = batch.iter().map(|queued| &queued.charge);
        match decide(&mut connection, charge, charges).await {
            Ok(replies) => {
                for (queued, reply) in batch.drain(..).zip(replies) {
                    // A caller that gave up dropped its receiver: nothing to
                    // tell (a late charge's reply is still awaited).
                    let _ = queued.reply.send(reply);
                }
            }
            Err(error) => {
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The error of a charge whose batcher is gone (its runtime shut down).
fn stopped() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "the Redis store's batching task has stopped (was its tokio runtime shut down?)",
    ))
}
