/* nsbox-runtime's compiled `start` and `delete` (runtime_fast.c says when). */
#ifndef NSBOX_RUNTIME_FAST_H
#define NSBOX_RUNTIME_FAST_H

/* What runtime_fast_command returns when the command is Python's to run. */
#define RUNTIME_FAST_PYTHON (-1)

/* The command's exit status, or RUNTIME_FAST_PYTHON. */
int runtime_fast_command(int argc, char **argv);

#endif
