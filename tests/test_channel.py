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


def test_pair_is_a_cloexec_seqpacket_socketpair_that_keeps_big_messages_whole():
    """Channel.pair makes the socketpair through syscalls (no socket module on create's
    path): the fds must still be close-on-exec SOCK_SEQPACKET, one message per read."""
    import os
    import socket

    parent, child = ch.Channel.pair()
    try:
        for end in (parent, child):
            assert not os.get_inheritable(end.fileno())
            probe = socket.socket(fileno=os.dup(end.fileno()))
            assert (probe.family, probe.type) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
            probe.close()
        state = {"annotations": {"big": "x" * 40000}}  # well over a pipe's atomic 4 KiB
        child.send(ch.HOOKS_DONE, state=state)
        child.send(ch.CREATED)
        assert parent.expect(ch.HOOKS_DONE)["state"] == state
        assert parent.expect(ch.CREATED)["type"] == ch.CREATED
    finally:
        parent.close()
        child.close()
        child.close()  # idempotent: never closes a reused fd number
