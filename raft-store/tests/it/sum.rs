//! A tiny [`raft_store::Machine`]: a running sum, one row, one log record per command.

use openraft::{AnyError, LogId};
use raft_store::{Machine, MachineApplied};

use crate::TestConfig;

#[derive(Default)]
pub struct Sum {
    pub total: u64,
}

impl Machine<TestConfig> for Sum {
    fn apply(&mut self, log_id: &LogId<u64>, command: &u64) -> MachineApplied<u64> {
        self.total += command;
        MachineApplied {
            reply: self.total,
            rows: vec![(b"sum".to_vec(), Some(self.total.to_be_bytes().to_vec()))],
            log_records: vec![(
                log_id.index,
                vec![u8::try_from(*command).unwrap_or(u8::MAX)],
            )],
        }
    }

    fn no_command_reply(&self) -> u64 {
        self.total
    }

    fn load(&mut self, rows: Vec<(Vec<u8>, Vec<u8>)>, _applied: u64) -> Result<(), AnyError> {
        self.total = 0;
        for (k, v) in rows {
            let bytes: [u8; 8] = v
                .try_into()
                .map_err(|_| AnyError::error("sum row is not 8 bytes"))?;
            if k == b"sum" {
                self.total = u64::from_be_bytes(bytes);
            }
        }
        Ok(())
    }
}
