#!/bin/sh
# service-user.sh: let the user cloud services run custom images as unpack the code bundle and
# write outputs. ModelArts starts training containers as ma-user, uid 1000, group 100 (ma-group):
# "Uid for custom image (default: 1000)" (ma-cli ma-job submit,
# https://support.huaweicloud.com/devtool-modelarts/devtool-modelarts_0322.html) and "ma-user
# (UID: 1000), ma-group (GID: 100) ... if you use a custom image, you must pre-configure the above
# user and group in your image" (https://support.huaweicloud.com/intl/en-us/devtool-modelarts/devtool-modelarts_03034.html).
# The image keeps root as its default user (SageMaker and the local docker runtime run as root);
# the contract's folders under /opt/ml belong to uid 1000 and group 100, group-writable, so either
# user can write them. An existing uid 1000 or gid 100 (Debian's "users") is used as it is.
set -eu
getent group 100 >/dev/null || groupadd --gid 100 ma-group
getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 100 --create-home --home-dir /home/ma-user \
    --shell /bin/sh ma-user
for dir in /opt/ml /opt/ml/code /opt/ml/model /opt/ml/checkpoints /opt/ml/faceops /opt/ml/input \
           /opt/ml/input/data /opt/ml/input/config /opt/ml/output /opt/ml/output/data /opt/ml/output/faceops; do
    install -d -o 1000 -g 100 -m 2775 "$dir"
done
