//! The dead-letter admin API (`ops.v1.DeadLetterAdmin`): listing what a service's consumers
//! set aside, replaying it through the consumers that own it, and discarding it. Where it is
//! served (the loopback admin listener) is the server's business.

use std::sync::Arc;

use contracts::ops::v1 as pb;
use contracts::ops::v1::dead_letter_admin_server::{DeadLetterAdmin, DeadLetterAdminServer};
use platform::db::{Database, StoreError};
use tonic::{Request, Response, Status};

use crate::feed::{ReplayOutcome, Replayer};
use crate::store::{self, DeadLetter, DeadLetterFilter};

/// Most letters per page, and per replay or discard request.
const MAX_IDS: usize = 1_000;
const DEFAULT_PAGE: u32 = 100;

/// The API over one service's database and the consumers it runs.
#[derive(Debug, Clone)]
pub struct DeadLetterApi {
    db: Database,
    replayers: Vec<Arc<dyn Replayer>>,
}

impl DeadLetterApi {
    pub fn new(db: Database, replayers: Vec<Arc<dyn Replayer>>) -> Self {
        Self { db, replayers }
    }

    pub fn into_server(self) -> DeadLetterAdminServer<Self> {
        DeadLetterAdminServer::new(self)
    }

    fn replayer(&self, letter: &DeadLetter) -> Option<&Arc<dyn Replayer>> {
        self.replayers.iter().find(|replayer| {
            replayer.consumer() == letter.consumer && replayer.stream() == letter.stream
        })
    }
}

fn store_status(error: &StoreError) -> Status {
    platform::status::from_store_error(error)
}

fn to_wire(letter: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: letter.id,
        consumer: letter.consumer,
        stream: letter.stream,
        stream_sequence: letter.stream_sequence,
        subject: letter.subject,
        event_id: letter.event_id.unwrap_or_default(),
        event_type: letter.event_type.unwrap_or_default(),
        reason: letter.reason,
        failed_at: Some(platform::time::to_timestamp(letter.failed_at_micros)),
        payload: letter.payload,
    }
}

fn check_ids(ids: &[i64]) -> Result<(), Status> {
    if ids.len() > MAX_IDS {
        return Err(Status::invalid_argument(format!(
            "ids: at most {MAX_IDS} at a time, got {}",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|id| **id <= 0) {
        return Err(Status::invalid_argument(format!(
            "ids: dead letter ids are positive, got {bad}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl DeadLetterAdmin for DeadLetterApi {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            1..=1_000 => request.page_size.unsigned_abs(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "page_size: must be between 1 and 1000 (0 for {DEFAULT_PAGE}), got {other}"
                )));
            }
        };
        let filter = DeadLetterFilter {
            consumer: None,
            stream: (!request.stream.is_empty()).then_some(request.stream),
            after_id: request.after_id.max(0),
            limit: limit + 1,
        };
        let mut letters = store::list_dead_letters(&self.db, &filter)
            .await
            .map_err(|error| store_status(&error))?;
        let more = letters.len() > limit as usize;
        letters.truncate(limit as usize);
        let next_after_id = if more {
            letters.last().map_or(0, |letter| letter.id)
        } else {
            0
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(to_wire).collect(),
            next_after_id,
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let request = request.into_inner();
        check_ids(&request.ids)?;
        if request.all != request.ids.is_empty() {
            return Err(Status::invalid_argument(
                "give either ids or all, not both and not neither",
            ));
        }
        let letters = store::list_dead_letters(
            &self.db,
            &DeadLetterFilter {
                limit: u32::MAX,
                ..DeadLetterFilter::default()
            },
        )
        .await
        .map_err(|error| store_status(&error))?;
        let wanted: Vec<DeadLetter> = if request.all {
            letters
        } else {
            let mut wanted = Vec::with_capacity(request.ids.len());
            for id in &request.ids {
                let letter = letters
                    .iter()
                    .find(|letter| letter.id == *id)
                    .ok_or_else(|| Status::not_found(format!("no dead letter {id}")))?;
                wanted.push(letter.clone());
            }
            wanted
        };
        // Every letter must have a consumer to replay it before any is touched.
        for letter in &wanted {
            if self.replayer(letter).is_none() {
                return Err(Status::failed_precondition(format!(
                    "dead letter {} was set aside by consumer {:?} on {}, which this process does not run; start it (or discard the letter)",
                    letter.id, letter.consumer, letter.stream
                )));
            }
        }
        let mut outcomes = Vec::with_capacity(wanted.len());
        for letter in &wanted {
            let Some(replayer) = self.replayer(letter) else {
                continue;
            };
            let outcome = replayer
                .replay(letter.id)
                .await
                .map_err(|error| store_status(&error))?;
            use pb::replay_outcome::Result as Wire;
            let (result, reason) = match outcome {
                ReplayOutcome::Applied => (Wire::Applied, String::new()),
                ReplayOutcome::Skipped { applied } => (
                    Wire::Skipped,
                    format!("version {applied} of its aggregate was applied since"),
                ),
                ReplayOutcome::StillFailing(reason) => (Wire::StillFailing, reason),
                ReplayOutcome::NotFound => (
                    Wire::Skipped,
                    "gone already (replayed or discarded meanwhile)".to_owned(),
                ),
            };
            outcomes.push(pb::ReplayOutcome {
                id: letter.id,
                result: result.into(),
                reason,
            });
        }
        Ok(Response::new(pb::ReplayDeadLettersResponse { outcomes }))
    }

    async fn discard_dead_letters(
        &self,
        request: Request<pb::DiscardDeadLettersRequest>,
    ) -> Result<Response<pb::DiscardDeadLettersResponse>, Status> {
        let request = request.into_inner();
        check_ids(&request.ids)?;
        if request.ids.is_empty() {
            return Err(Status::invalid_argument("ids: name the letters to discard"));
        }
        let discarded = store::discard_dead_letters(&self.db, &request.ids)
            .await
            .map_err(|error| store_status(&error))?;
        tracing::info!(discarded, "dead letters discarded");
        Ok(Response::new(pb::DiscardDeadLettersResponse { discarded }))
    }
}
