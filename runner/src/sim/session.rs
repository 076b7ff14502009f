//! SGLang's stateful sessions (spec §3.6): `/open_session`, `/close_session`, and the
//! `session_params` that make a request continue an earlier one, so the client sends only the
//! new turn. The KV reuse itself still comes from the radix cache, as in SGLang.

use super::protocol::SessionParams;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Node {
    input_ids: Arc<Vec<u32>>,
    output_ids: Arc<Vec<u32>>,
    finished: bool,
    parent: Option<String>,
    children: Vec<String>,
}

#[derive(Debug, Default)]
struct Session {
    nodes: HashMap<String, Node>,
}

/// All open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: HashMap<String, Session>,
}

impl Sessions {
    /// Open a session; `Err` when the id is already open.
    pub fn open(&mut self, id: String) -> Result<String, String> {
        if self.open.contains_key(&id) {
            return Err(format!(
                "Failed to open the session. Session id {id} already exists."
            ));
        }
        self.open.insert(id.clone(), Session::default());
        Ok(id)
    }

    /// Close a session; `false` when it was not open (SGLang only warns).
    pub fn close(&mut self, id: &str) -> bool {
        self.open.remove(id).is_some()
    }

    /// Resolve a request in a session: the full token sequence (parent prompt + parent
    /// output + `new_ids`), registering `rid` as an unfinished child.
    pub fn begin(
        &mut self,
        p: &SessionParams,
        rid: &str,
        new_ids: &[u32],
    ) -> Result<Vec<u32>, String> {
        let sid = p.id.as_deref().unwrap_or_default();
        let session = self
            .open
            .get_mut(sid)
            .ok_or_else(|| format!("Invalid request: session id {sid} does not exist"))?;
        let replace = p.replace.unwrap_or(false);
        let mut ids = match &p.rid {
            None => {
                if replace {
                    session.nodes.clear();
                }
                Vec::new()
            }
            Some(parent_rid) => {
                let parent = session.nodes.get(parent_rid).ok_or_else(|| {
                    format!("Invalid request: session rid {parent_rid} does not exist")
                })?;
                if !parent.finished {
                    return Err(format!(
                        "Invalid request: session rid {parent_rid} has not finished yet"
                    ));
                }
                let mut ids = parent.input_ids.to_vec();
                if !p.drop_previous_output.unwrap_or(false) {
                    ids.extend_from_slice(&parent.output_ids);
                }
                if let Some(off) = p.offset.filter(|&o| o != 0) {
                    // Python slicing `[:offset]`.
                    let n = ids.len() as i64;
                    let cut = if off < 0 {
                        (n + off).max(0)
                    } else {
                        off.min(n)
                    };
                    ids.truncate(cut as usize);
                }
                if replace {
                    let others: Vec<String> = parent.children.clone();
                    for c in others {
                        remove_subtree(session, &c);
                    }
                    if let Some(parent) = session.nodes.get_mut(parent_rid) {
                        parent.children.clear();
                    }
                }
                ids
            }
        };
        ids.extend_from_slice(new_ids);
        if let Some(parent) = p.rid.as_ref().and_then(|r| session.nodes.get_mut(r)) {
            parent.children.push(rid.to_string());
        }
        session.nodes.insert(
            rid.to_string(),
            Node {
                input_ids: Arc::new(ids.clone()),
                output_ids: Arc::new(Vec::new()),
                finished: false,
                parent: p.rid.clone(),
                children: Vec::new(),
            },
        );
        Ok(ids)
    }

    /// A session request finished with `output_ids` (or was aborted: `None` forgets it).
    pub fn finish(&mut self, sid: &str, rid: &str, output_ids: Option<&[u32]>) {
        let Some(session) = self.open.get_mut(sid) else {
            return;
        };
        match output_ids {
            Some(out) => {
                if let Some(n) = session.nodes.get_mut(rid) {
                    n.output_ids = Arc::new(out.to_vec());
                    n.finished = true;
                }
            }
            None => {
                let parent = session.nodes.get(rid).and_then(|n| n.parent.clone());
                remove_subtree(session, rid);
                if let Some(p) = parent.and_then(|p| session.nodes.get_mut(&p)) {
                    p.children.retain(|c| c != rid);
                }
            }
        }
    }
}

fn remove_subtree(session: &mut Session, rid: &str) {
    if let Some(node) = session.nodes.remove(rid) {
        for c in node.children {
            remove_subtree(session, &c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(rid: Option<&str>) -> SessionParams {
        SessionParams {
            id: Some("s".into()),
            rid: rid.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn concatenates_parent_prompt_output_and_new_ids() {
        let mut s = Sessions::default();
        s.open("s".into()).unwrap();
        assert!(s.open("s".into()).is_err());
        assert_eq!(s.begin(&sp(None), "a", &[1, 2]).unwrap(), vec![1, 2]);
        // Parent not finished yet.
        assert!(s
            .begin(&sp(Some("a")), "b", &[5])
            .unwrap_err()
            .contains("not finished"));
        s.finish("s", "a", Some(&[3, 4]));
        assert_eq!(
            s.begin(&sp(Some("a")), "b", &[5]).unwrap(),
            vec![1, 2, 3, 4, 5]
        );
        let drop_out = SessionParams {
            drop_previous_output: Some(true),
            ..sp(Some("a"))
        };
        assert_eq!(s.begin(&drop_out, "c", &[6]).unwrap(), vec![1, 2, 6]);
        let offset = SessionParams {
            offset: Some(-1),
            ..sp(Some("a"))
        };
        assert_eq!(s.begin(&offset, "d", &[7]).unwrap(), vec![1, 2, 3, 7]);
        // replace drops the parent's other branches.
        s.finish("s", "b", Some(&[9]));
        let replace = SessionParams {
            replace: Some(true),
            ..sp(Some("a"))
        };
        s.begin(&replace, "e", &[8]).unwrap();
        assert!(s
            .begin(&sp(Some("b")), "f", &[1])
            .unwrap_err()
            .contains("does not exist"));
        assert!(s
            .begin(&sp(Some("zz")), "g", &[1])
            .unwrap_err()
            .contains("rid zz"));
        let unknown = SessionParams {
            id: Some("nope".into()),
            ..Default::default()
        };
        assert!(s
            .begin(&unknown, "h", &[1])
            .unwrap_err()
            .contains("session id nope"));
        assert!(s.close("s"));
        assert!(!s.close("s"));
    }
}
