"""The pikafka lab: real systemd hosts in containers on one machine, deployed to with the real Ansible playbook."""
