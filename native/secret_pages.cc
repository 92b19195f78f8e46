#include "secret_pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kmsdisk {

bool AllocSecretPages(size_t bytes, SecretPages* out) {
  long ps = sysconf(_SC_PAGESIZE);
  size_t page = ps > 0 ? static_cast<size_t>(ps) : 4096;
  size_t len = (bytes + page - 1) / page * page;
  size_t total = len + 2 * page;
  void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return false;
  uint8_t* base = static_cast<uint8_t*>(m);
  if (mprotect(base + page, len, PROT_READ | PROT_WRITE) != 0) {
    int e = errno;
    munmap(m, total);
    errno = e;
    return false;
  }
  SecretPages p;
  p.mapping = base;
  p.mappingLen = total;
  p.data = base + page;
  p.len = len;
  madvise(p.data, len, MADV_DONTDUMP);
#ifdef MADV_WIPEONFORK
  madvise(p.data, len, MADV_WIPEONFORK);
#endif
  if (mlock(p.data, len) == 0) p.locked = true;
  else p.lockErrno = errno;
  *out = p;
  return true;
}

void FreeSecretPages(SecretPages* p) {
  if (p->mapping == nullptr) return;
  explicit_bzero(p->data, p->len);
  if (p->locked) munlock(p->data, p->len);
  munmap(p->mapping, p->mappingLen);
  *p = SecretPages();
}

}  // namespace kmsdisk
