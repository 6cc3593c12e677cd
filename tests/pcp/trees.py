"""What the pcp tests compare: a tree's contents as facts by path (tests/pcp/*.py)."""
import hashlib
import os
import stat


def manifest(top, owners=False, times=False, links=False, xattrs=False):
    """What a tree holds, by path: the facts the case compares."""
    out = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            facts = [stat.filemode(st.st_mode)]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    facts.append(hashlib.sha256(f.read()).hexdigest()[:16])
                facts.append(str(st.st_size))
                if links:
                    first = inodes.setdefault((st.st_dev, st.st_ino), rel)
                    facts.append("same inode as " + first if first != rel else "")
            elif stat.S_ISLNK(st.st_mode):
                facts.append("-> " + os.readlink(p))
            if owners:
                facts.append("%d:%d" % (st.st_uid, st.st_gid))
            if times and not stat.S_ISLNK(st.st_mode):
                facts.append("mtime %d" % st.st_mtime_ns)
            if xattrs and not stat.S_ISLNK(st.st_mode):
                names = sorted(a for a in os.listxattr(p, follow_symlinks=False) if a.startswith("user."))
                facts += ["%s=%r" % (a, os.getxattr(p, a, follow_symlinks=False)) for a in names]
            out[rel] = " ".join(facts)
    return out
