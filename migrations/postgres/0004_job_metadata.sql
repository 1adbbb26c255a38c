-- What a job keeps of each entry beyond its content, mode and times (all on by default, as
-- `rsync -aHAX` run as root keeps them); turn one off with `ferry job add --no-…`:
-- keep_owner:      owner and group (where the writer runs as root), by name between machines:
--                  a user the destination knows by the same name gets its number there;
-- numeric_ids:     owners keep their numbers instead (`rsync --numeric-ids`);
-- keep_acls:       POSIX ACLs, access and default;
-- keep_xattrs:     the other extended attributes (user., security., trusted.: Samba's among them);
-- keep_hard_links: names of one file at the source stay one file at every destination
--                  (mirror and copy);
-- keep_specials:   FIFOs, sockets and devices are made at the destinations of a mirror or a copy
--                  (off by default: skipped with a warning; an agent makes no device for a peer).
ALTER TABLE jobs ADD COLUMN keep_owner BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN keep_acls BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN keep_xattrs BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN keep_hard_links BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN keep_specials BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN numeric_ids BOOLEAN NOT NULL DEFAULT false;
