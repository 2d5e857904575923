"""The book's ConvolutionNetwork (chapter 08-4), as printed: the eager baseline of bench/.

Kept faithful on purpose, comments translated: eager forpass, a Python generator of
minibatches, one GradientTape step per batch and a second forward pass (`get_loss`) to
record each batch's loss. Only the progress printing ('에포크', '.') is left out, which
would otherwise flood the benchmark's output.
"""

import numpy as np
import tensorflow as tf


class ConvolutionNetwork:
    def __init__(self, n_kernels=10, units=10, batch_size=32, learning_rate=0.1):
        self.n_kernels = n_kernels  # number of convolution kernels
        self.kernel_size = 3  # kernel size
        self.optimizer = None  # optimizer
        self.conv_w = None  # convolution weights
        self.conv_b = None  # convolution bias
        self.units = units  # hidden units
        self.batch_size = batch_size  # batch size
        self.w1 = None  # hidden layer weights
        self.b1 = None  # hidden layer bias
        self.w2 = None  # output layer weights
        self.b2 = None  # output layer bias
        self.a1 = None  # hidden layer activations
        self.losses = []  # training losses
        self.val_losses = []  # validation losses
        self.lr = learning_rate  # learning rate

    def forpass(self, x):
        # 3x3 convolution
        c_out = tf.nn.conv2d(x, self.conv_w, strides=1, padding="SAME") + self.conv_b
        # ReLU
        r_out = tf.nn.relu(c_out)
        # 2x2 max pooling
        p_out = tf.nn.max_pool2d(r_out, ksize=2, strides=2, padding="VALID")
        # flatten all but the batch dimension
        f_out = tf.reshape(p_out, [x.shape[0], -1])
        z1 = tf.matmul(f_out, self.w1) + self.b1  # first layer's linear part
        a1 = tf.nn.relu(z1)  # activation
        z2 = tf.matmul(a1, self.w2) + self.b2  # second layer's linear part
        return z2

    def init_weights(self, input_shape, n_classes):
        g = tf.initializers.glorot_uniform()
        self.conv_w = tf.Variable(g((3, 3, 1, self.n_kernels)))
        self.conv_b = tf.Variable(np.zeros(self.n_kernels), dtype=float)
        n_features = 14 * 14 * self.n_kernels
        self.w1 = tf.Variable(g((n_features, self.units)))  # (features, hidden units)
        self.b1 = tf.Variable(np.zeros(self.units), dtype=float)  # hidden units
        self.w2 = tf.Variable(g((self.units, n_classes)))  # (hidden units, classes)
        self.b2 = tf.Variable(np.zeros(n_classes), dtype=float)  # classes

    def fit(self, x, y, epochs=100, x_val=None, y_val=None):
        self.init_weights(x.shape, y.shape[1])  # initialize the weights
        self.optimizer = tf.optimizers.SGD(learning_rate=self.lr)
        for _ in range(epochs):
            self.train_epoch(x, y)
            # validation loss
            self.val_losses.append(self.get_loss(x_val, y_val))

    def train_epoch(self, x, y):
        """The body of the book's epoch loop (split out so bench/ can time each epoch apart
        from its validation loss)."""
        batch_losses = []
        for x_batch, y_batch in self.gen_batch(x, y):
            self.training(x_batch, y_batch)
            # record the batch loss
            batch_losses.append(self.get_loss(x_batch, y_batch))
        # the epoch's training loss is the mean of the batch losses
        self.losses.append(np.mean(batch_losses))

    # minibatch generator
    def gen_batch(self, x, y):
        bins = len(x) // self.batch_size  # number of minibatches
        indexes = np.random.permutation(np.arange(len(x)))  # shuffle the indices
        x = x[indexes]
        y = y[indexes]
        for i in range(bins):
            start = self.batch_size * i
            end = self.batch_size * (i + 1)
            yield x[start:end], y[start:end]  # a slice of batch_size

    def training(self, x, y):
        with tf.GradientTape() as tape:
            z = self.forpass(x)  # forward pass
            # loss
            loss = tf.nn.softmax_cross_entropy_with_logits(y, z)
            loss = tf.reduce_mean(loss)

        weights_list = [self.conv_w, self.conv_b, self.w1, self.b1, self.w2, self.b2]
        # gradients of the weights
        grads = tape.gradient(loss, weights_list)
        # update the weights
        self.optimizer.apply_gradients(zip(grads, weights_list))

    def predict(self, x):
        z = self.forpass(x)  # forward pass
        return np.argmax(z.numpy(), axis=1)  # index of the largest value

    def score(self, x, y):
        # share of predictions equal to the targets
        return np.mean(self.predict(x) == np.argmax(y, axis=1))

    def get_loss(self, x, y):
        z = self.forpass(x)  # forward pass
        # loss
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, z))
        return loss.numpy()
