//! The iotlan IoT address pool. (Being written.)
