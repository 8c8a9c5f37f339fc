"""The runtime's parent/child channel (nsbox/runtime/channel.py) on real sockets."""

from __future__ import annotations

import pytest

from nsbox.runtime import channel as ch


def test_an_error_sent_before_the_peer_went_is_read_despite_unread_messages():
    """A child that fails with our message unread: the kernel reports ECONNRESET once, ahead
    of the child's error (SOCK_SEQPACKET); the parent must still see the error."""
    parent, child = ch.Channel.pair()
    parent.send("go")                       # never read by the child
    child.send(ch.ERROR, message="join network namespace: setns: Invalid argument")
    child.close()                           # closed with "go" unread
    with pytest.raises(ch.ChildFailed, match="setns: Invalid argument"):
        parent.expect("created")
    parent.close()


def test_end_of_file_says_the_process_exited():
    parent, child = ch.Channel.pair()
    child.close()
    with pytest.raises(Exception, match="exited during setup"):
        parent.recv()
    parent.close()
