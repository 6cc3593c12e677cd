/* The child program of the tests that spawn hundreds or thousands of children. It is linked
 * statically: an exec with no dynamic loader and no shared libraries to map costs about half
 * what /bin/sh's or cat's does, and those execs are a large part of what such tests spend.
 *
 *   static_child gate CODE   reads stdin until a newline or end of file (like sh's `read x`),
 *                            then exits with CODE (0-255)
 *   static_child cat         copies stdin to stdout until end of file, then exits 0
 *
 * A usage error or a failed read or write exits 125 (no test expects that code). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { failed = 125 };

static int usage(void) {
  static const char msg[] = "usage: static_child gate CODE | static_child cat\n";
  const ssize_t ignored = write(2, msg, sizeof msg - 1); /* a failed message changes nothing */
  (void)ignored;
  return failed;
}

/* One byte at a time, as sh's read does on a pipe: a line written to a pipe that many children
 * share goes to one child only. */
static int gate(int code) {
  for (;;) {
    char c;
    const ssize_t n = read(0, &c, 1);
    if (n == 0 || (n == 1 && c == '\n')) return code;
    if (n < 0 && errno != EINTR) return failed;
  }
}

static int cat(void) {
  char buf[65536];
  for (;;) {
    const ssize_t n = read(0, buf, sizeof buf);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return failed;
    }
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = write(1, buf + done, (size_t)(n - done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return failed;
      }
      done += w;
    }
  }
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "gate") == 0) {
    char* end;
    errno = 0;
    const long code = strtol(argv[2], &end, 10);
    if (errno != 0 || end == argv[2] || *end != '\0' || code < 0 || code > 255) return usage();
    return gate((int)code);
  }
  if (argc == 2 && strcmp(argv[1], "cat") == 0) return cat();
  return usage();
}
